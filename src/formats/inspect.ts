import { statSync } from 'node:fs';
import { readConfigJson } from '../io/config.js';
import { readModelConfig } from '../models/index.js';
import { SafetensorsModel, type DType } from '../io/safetensors.js';
import { readQuantConfig, type QuantConfig } from './gptq.js';

export interface GptqtConfig {
  method: 'gptqt';
  bits: number;
  highBits: number;
}

/** What a model directory holds: architecture, quantization, bits per weight, size vs fp16, per-tensor table. */
export interface Inspection {
  dir: string;
  architecture: {
    modelType: string;
    layers: number;
    hidden: number;
    intermediate: number;
    heads: number;
    kvHeads: number;
    vocab: number;
    context: number;
  };
  quantization?: QuantConfig | GptqtConfig;
  tensors: { name: string; dtype: DType; shape: number[]; bytes: number; file: string }[];
  /** quantized linear weights: parameters and bits per weight including scales, zeros and g_idx */
  quantizedParams: number;
  bitsPerWeight?: number;
  totalParams: number;
  bytesOnDisk: number;
  fp16Bytes: number;
}

export function inspectModel(dir: string): Inspection {
  const raw = readConfigJson(dir);
  const cfg = readModelConfig(dir);
  const qc = raw['quantization_config'] as { quant_method?: string; bits?: number; high_bits?: number } | undefined;
  const quantization: QuantConfig | GptqtConfig | undefined =
    qc?.quant_method === 'gptqt' ? { method: 'gptqt', bits: qc.bits ?? 0, highBits: qc.high_bits ?? 0 } : readQuantConfig(dir, raw);
  const st = new SafetensorsModel(dir);
  try {
    const tensors = st.names().map((name) => {
      const i = st.info(name);
      return { name, dtype: i.dtype, shape: i.shape, bytes: i.byteLength, file: i.file };
    });
    let quantizedParams = 0;
    let quantizedBytes = 0;
    let totalParams = 0;
    for (const t of tensors) {
      const base = t.name.replace(/\.(qweight|qzeros|scales|g_idx|bcq_qweight|bcq_alpha|bcq_beta)$/, '');
      if (t.name.endsWith('qweight')) {
        // qweight is [in·bits/32, out]: the layer has in·out weights
        const params = ((t.shape[0]! * 32) / quantization!.bits) * t.shape[1]!;
        quantizedParams += params;
        totalParams += params;
      } else if (base === t.name) {
        totalParams += t.shape.reduce((a, b) => a * b, 1);
      }
      if (base !== t.name) quantizedBytes += t.bytes;
    }
    const files = new Set(tensors.map((t) => t.file));
    const bytesOnDisk = [...files].reduce((a, f) => a + statSync(f).size, 0);
    const result: Inspection = {
      dir,
      architecture: {
        modelType: cfg.modelType,
        layers: cfg.numLayers,
        hidden: cfg.hiddenSize,
        intermediate: cfg.intermediateSize,
        heads: cfg.numHeads,
        kvHeads: cfg.numKvHeads,
        vocab: cfg.vocabSize,
        context: cfg.maxPositions,
      },
      tensors,
      quantizedParams,
      totalParams,
      bytesOnDisk,
      fp16Bytes: totalParams * 2,
    };
    if (quantization) {
      result.quantization = quantization;
      result.bitsPerWeight = (quantizedBytes * 8) / quantizedParams;
    }
    return result;
  } finally {
    st.close();
  }
}

const mb = (b: number): string => `${(b / 2 ** 20).toFixed(2)} MiB`;

export function formatInspection(r: Inspection): string {
  const a = r.architecture;
  const lines = [
    `${r.dir}`,
    `architecture: ${a.modelType}, ${a.layers} layers, hidden ${a.hidden}, intermediate ${a.intermediate}, heads ${a.heads} (kv ${a.kvHeads}), vocab ${a.vocab}, context ${a.context}`,
    r.quantization && 'method' in r.quantization
      ? `quantization: gptqt ${r.quantization.bits}-bit binary coding (from ${r.quantization.highBits}-bit linear), one coding per output row`
      : r.quantization
        ? `quantization: gptq ${r.quantization.bits}-bit, group size ${r.quantization.groupSize}, ${r.quantization.sym ? 'sym' : 'asym'}, desc_act ${r.quantization.descAct}, format ${r.quantization.format}`
        : 'quantization: none (float checkpoint)',
    `parameters: ${r.totalParams.toLocaleString('en-US')} (${r.quantizedParams.toLocaleString('en-US')} in quantized linear layers)`,
  ];
  if (r.bitsPerWeight !== undefined)
    lines.push(
      `bits per quantized weight: ${r.bitsPerWeight.toFixed(3)} (codes ${r.quantization!.bits} + per-row or per-group parameters${'method' in r.quantization! ? '' : ', g_idx'})`,
    );
  lines.push(`size on disk: ${mb(r.bytesOnDisk)} vs fp16 ${mb(r.fp16Bytes)} (${((100 * r.bytesOnDisk) / r.fp16Bytes).toFixed(1)}%)`, '');
  const w = Math.max(...r.tensors.map((t) => t.name.length));
  lines.push(`${'tensor'.padEnd(w)}  dtype  ${'shape'.padEnd(14)}  bytes`);
  for (const t of r.tensors) lines.push(`${t.name.padEnd(w)}  ${t.dtype.padEnd(5)}  ${`[${t.shape.join(', ')}]`.padEnd(14)}  ${t.bytes}`);
  return lines.join('\n');
}
