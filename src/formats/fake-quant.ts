import { readConfigJson } from '../io/config.js';
import { SafetensorsModel, type TensorToWrite } from '../io/safetensors.js';
import { dequantize, type QuantizedLayer } from '../quant/quantized-layer.js';
import { readModelConfig, storedLinear } from '../models/index.js';
import { writeModelDir } from './model-dir.js';

/**
 * A "fake-quant" checkpoint: the source model with every quantized linear replaced by its dequantized
 * float32 weights. Any fp loader (ours, transformers) evaluates exactly what the quantizer produced.
 */
export async function writeFakeQuant(
  srcDir: string,
  outDir: string,
  layers: ReadonlyMap<string, QuantizedLayer>,
  summary: object,
): Promise<void> {
  const cfg = readModelConfig(srcDir);
  const st = new SafetensorsModel(srcDir);
  try {
    const tensors = new Map<string, TensorToWrite>();
    for (const name of st.names()) {
      const q = layers.get(name);
      // a mix's rounded embedding / head is [rows, cols] as stored, whatever the layout of the linear layers
      const outer = name === cfg.tensors.embed || name === cfg.tensors.head;
      // dequantized when its turn to be written comes: one float32 layer in memory at a time
      const weights = () => dequantize(layers.get(name)!);
      if (q && outer) tensors.set(name, { dtype: 'F32', shape: [q.rows, q.cols], data: weights });
      else if (q) {
        const { rows, cols } = q;
        const shape = cfg.transposedLinears ? [cols, rows] : [rows, cols];
        tensors.set(name, { dtype: 'F32', shape, data: () => storedLinear(cfg, weights(), rows, cols).data });
      } else {
        const { dtype, shape } = st.info(name);
        tensors.set(name, { dtype, shape, data: () => st.read(name).data });
      }
    }
    await writeModelDir(srcDir, outDir, { json: { 'config.json': readConfigJson(srcDir), 'quantize_summary.json': summary }, tensors });
  } finally {
    st.close();
  }
}
