import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeAtomically } from '../io/atomic.js';
import { readConfigJson } from '../io/config.js';
import { SafetensorsModel, writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { dequantize, type QuantizedLayer } from '../quant/quantized-layer.js';

export const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.model',
  'generation_config.json',
];

/**
 * A "fake-quant" checkpoint: the source model with every quantized linear replaced by its dequantized
 * float32 weights. Any fp loader (ours, transformers) evaluates exactly what the quantizer produced.
 */
export async function writeFakeQuant(srcDir: string, outDir: string, layers: Map<string, QuantizedLayer>, summary: object): Promise<void> {
  const st = new SafetensorsModel(srcDir);
  try {
    const tensors = new Map<string, TensorToWrite>();
    for (const name of st.names()) {
      const q = layers.get(name);
      if (q) tensors.set(name, { dtype: 'F32', shape: [q.rows, q.cols], data: dequantize(q) });
      else tensors.set(name, st.read(name));
    }
    await writeAtomically(outDir, async (tmp) => {
      mkdirSync(tmp, { recursive: true });
      writeFileSync(join(tmp, 'config.json'), JSON.stringify(readConfigJson(srcDir), null, 2) + '\n');
      for (const f of TOKENIZER_FILES) if (existsSync(join(srcDir, f))) copyFileSync(join(srcDir, f), join(tmp, f));
      writeFileSync(join(tmp, 'quantize_summary.json'), JSON.stringify(summary, null, 2) + '\n');
      await writeSafetensors(join(tmp, 'model.safetensors'), tensors);
    });
  } finally {
    st.close();
  }
}
