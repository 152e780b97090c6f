import { readConfigJson } from '../io/config.js';
import { fail } from '../io/errors.js';
import { SafetensorsModel, type TensorToWrite } from '../io/safetensors.js';
import type { BinaryCodedLayer } from '../quant/gptqt.js';
import { writeModelDir } from './model-dir.js';
import { packStream, unpackStream } from './gptq-pack.js';

/**
 * The GPTQT checkpoint format (our own; no other tool reads it). config.json carries
 * `quantization_config = { quant_method: "gptqt", bits: k, high_bits, format_version: 1 }`; each binary-coded
 * linear layer `<name>` stores, instead of `<name>.weight`:
 *   `<name>.bcq_qweight` int32 [in·k/32, out]  k-bit codes packed along the input dimension exactly like GPTQ's
 *                                              qweight (least significant bits first); bit j of a code is 1 ⇔ b_j = +1
 *   `<name>.bcq_alpha`   float32 [out, k]       α_j per output row (weight units)
 *   `<name>.bcq_beta`    float32 [out]          β per output row
 * and the weight is W[r, c] = β_r + Σ_j α_rj·(bit_j(code[r, c]) ? +1 : −1). Other tensors are stored as read.
 */
export async function writeGptqtCheckpoint(
  srcDir: string,
  outDir: string,
  layers: ReadonlyMap<string, BinaryCodedLayer>,
  meta: { bits: number; highBits: number; summary?: object },
): Promise<void> {
  const st = new SafetensorsModel(srcDir);
  const tensors = new Map<string, TensorToWrite>();
  try {
    for (const name of st.names()) {
      const q = layers.get(name);
      if (!q) {
        const { dtype, shape } = st.info(name);
        tensors.set(name, { dtype, shape, data: () => st.read(name).data });
        continue;
      }
      const p = name.replace(/\.weight$/, '');
      const qweight = new Int32Array(((q.cols * q.bits) / 32) * q.rows);
      for (let r = 0; r < q.rows; r++) {
        packStream(
          q.cols,
          q.bits,
          (c) => q.codes[r * q.cols + c]!,
          (w, word) => (qweight[w * q.rows + r] = word),
        );
      }
      tensors.set(`${p}.bcq_qweight`, { dtype: 'I32', shape: [(q.cols * q.bits) / 32, q.rows], data: qweight });
      tensors.set(`${p}.bcq_alpha`, { dtype: 'F32', shape: [q.rows, q.bits], data: q.alpha });
      tensors.set(`${p}.bcq_beta`, { dtype: 'F32', shape: [q.rows], data: q.beta });
    }
    const config = readConfigJson(srcDir);
    config['quantization_config'] = { quant_method: 'gptqt', bits: meta.bits, high_bits: meta.highBits, format_version: 1 };
    await writeModelDir(srcDir, outDir, { json: { 'config.json': config, 'quantize_summary.json': meta.summary }, tensors });
  } finally {
    st.close();
  }
}

/** The tensors a GPTQT checkpoint stores for the linear layer `weightName`. */
export function gptqtTensorNames(weightName: string): { required: string[] } {
  const p = weightName.replace(/\.weight$/, '');
  return { required: [`${p}.bcq_qweight`, `${p}.bcq_alpha`, `${p}.bcq_beta`] };
}

export function readGptqtLinear(st: SafetensorsModel, weightName: string, rows: number, cols: number, bits: number): BinaryCodedLayer {
  const p = weightName.replace(/\.weight$/, '');
  const get = (suffix: string, dtype: string, shape: number[]): Int32Array | Float32Array => {
    const name = `${p}.${suffix}`;
    const info = st.info(name);
    if (info.dtype !== dtype || info.shape.join() !== shape.join()) {
      fail(`${info.file}: ${name} is ${info.dtype}[${info.shape}] but the config (gptqt ${bits}-bit) implies ${dtype}[${shape}]`);
    }
    return st.read(name).data as Int32Array | Float32Array;
  };
  const qweight = get('bcq_qweight', 'I32', [(cols * bits) / 32, rows]) as Int32Array;
  const codes = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    unpackStream(
      cols,
      bits,
      (w) => qweight[w * rows + r]!,
      (c, v) => (codes[r * cols + c] = v),
    );
  }
  return {
    rows,
    cols,
    bits,
    codes,
    alpha: get('bcq_alpha', 'F32', [rows, bits]) as Float32Array,
    beta: get('bcq_beta', 'F32', [rows]) as Float32Array,
  };
}
