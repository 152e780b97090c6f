import { statSync } from 'node:fs';
import { readConfigJson } from '../io/config.js';
import { readModelConfig } from '../models/index.js';
import { SafetensorsModel, type DType } from '../io/safetensors.js';
import { layerQuantConfig, readQuantConfig, type QuantConfig } from './gptq.js';
import { GgufFile, type GgufMetaEntry } from './gguf-read.js';
import { openGgufModel } from '../models/gguf-import.js';

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
        // a `dynamic` rule may give the layer its own bits (an 8-bit head beside 4-bit blocks)
        const q = quantization!;
        const bits = 'method' in q ? q.bits : (layerQuantConfig(q, base)?.bits ?? q.bits);
        const params = ((t.shape[0]! * 32) / bits) * t.shape[1]!;
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
        ? `quantization: gptq ${r.quantization.bits}-bit, group size ${r.quantization.groupSize}, ${r.quantization.sym ? 'sym' : 'asym'}, desc_act ${r.quantization.descAct}, format ${r.quantization.format}` +
          (r.quantization.dynamic
            ? `; dynamic: ${r.quantization.dynamic.map((d) => `${d.key} ${d.skip ? 'float' : JSON.stringify(d.overrides)}`).join(', ')}`
            : '')
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

/** What a GGUF file holds: its architecture, metadata, per-tensor types and shapes, bits per weight, size vs fp16. */
export interface GgufInspection {
  file: string;
  version: number;
  architecture: string;
  /** the architecture's shapes as its metadata states them (absent keys omitted) */
  shapes: Record<string, number>;
  /** every metadata key: scalars as they are, arrays as their element type and length */
  metadata: Record<string, string | number | boolean | { array: string; length: number }>;
  tensors: { name: string; type: string; shape: number[]; bytes: number; bitsPerWeight: number }[];
  /** tensor count by type */
  types: Record<string, number>;
  params: number;
  /** over every tensor, and over the 2-D tensors that are not float (the quantized weights) */
  bitsPerWeight: number;
  quantizedBitsPerWeight?: number;
  tensorBytes: number;
  bytesOnDisk: number;
  fp16Bytes: number;
  /** whether gptq-ts can run it (eval, generate), or why not */
  runs: true | string;
}

const SHAPE_KEYS = [
  'block_count',
  'embedding_length',
  'feed_forward_length',
  'attention.head_count',
  'attention.head_count_kv',
  'context_length',
  'vocab_size',
];
const FLOAT_TYPES = new Set(['F32', 'F16', 'BF16', 'F64']);

function metaSummary(e: GgufMetaEntry): GgufInspection['metadata'][string] {
  if (Array.isArray(e.value)) return { array: e.elem!, length: e.value.length };
  return typeof e.value === 'bigint' ? e.value.toString() : e.value;
}

export function inspectGguf(path: string): GgufInspection {
  const f = new GgufFile(path);
  try {
    const architecture = f.string('general.architecture') ?? '(none)';
    const shapes: Record<string, number> = {};
    for (const k of SHAPE_KEYS) {
      const e = f.metadata.get(`${architecture}.${k}`);
      if (e && typeof e.value === 'number') shapes[k] = e.value;
    }
    const tokens = f.metadata.get('tokenizer.ggml.tokens');
    if (shapes['vocab_size'] === undefined && tokens && Array.isArray(tokens.value)) shapes['vocab_size'] = tokens.value.length;
    const metadata = Object.fromEntries([...f.metadata].map(([k, e]) => [k, metaSummary(e)]));
    const tensors = [...f.tensors.values()].map((t) => ({
      name: t.name,
      type: t.typeName,
      shape: t.shape,
      bytes: t.bytes,
      bitsPerWeight: (t.bytes * 8) / t.elements,
    }));
    const types: Record<string, number> = {};
    let params = 0;
    let bytes = 0;
    let qParams = 0;
    let qBytes = 0;
    for (const t of f.tensors.values()) {
      types[t.typeName] = (types[t.typeName] ?? 0) + 1;
      params += t.elements;
      bytes += t.bytes;
      if (t.shape.length >= 2 && !FLOAT_TYPES.has(t.typeName)) {
        qParams += t.elements;
        qBytes += t.bytes;
      }
    }
    let runs: true | string = true;
    try {
      openGgufModel(path).tensors.close();
    } catch (e) {
      runs = (e as Error).message;
    }
    return {
      file: path,
      version: f.version,
      architecture,
      shapes,
      metadata,
      tensors,
      types,
      params,
      bitsPerWeight: (bytes * 8) / params,
      ...(qParams ? { quantizedBitsPerWeight: (qBytes * 8) / qParams } : {}),
      tensorBytes: bytes,
      bytesOnDisk: f.size,
      fp16Bytes: params * 2,
      runs,
    };
  } finally {
    f.close();
  }
}

export function formatGgufInspection(r: GgufInspection): string {
  const s = r.shapes;
  const shape = (k: string, label: string): string => (s[k] !== undefined ? `, ${label} ${s[k]}` : '');
  const scalars = Object.entries(r.metadata).map(([k, v]) =>
    typeof v === 'object'
      ? `  ${k}: [${v.array} x ${v.length}]`
      : `  ${k}: ${typeof v === 'string' && v.length > 80 ? `${JSON.stringify(v.slice(0, 77))}...` : JSON.stringify(v)}`,
  );
  const lines = [
    `${r.file} (GGUF v${r.version})`,
    `architecture: ${r.architecture}${shape('block_count', 'layers')}${shape('embedding_length', 'hidden')}${shape('feed_forward_length', 'intermediate')}${shape('attention.head_count', 'heads')}${shape('attention.head_count_kv', 'kv heads')}${shape('vocab_size', 'vocab')}${shape('context_length', 'context')}`,
    `gptq-ts runs it: ${r.runs === true ? 'yes' : `no (${r.runs})`}`,
    `tensor types: ${Object.entries(r.types)
      .map(([t, n]) => `${t} x ${n}`)
      .join(', ')}`,
    `parameters: ${r.params.toLocaleString('en-US')}; bits per weight ${r.bitsPerWeight.toFixed(3)}${r.quantizedBitsPerWeight !== undefined ? ` (quantized tensors ${r.quantizedBitsPerWeight.toFixed(3)})` : ''}`,
    `size on disk: ${mb(r.bytesOnDisk)} vs fp16 ${mb(r.fp16Bytes)} (${((100 * r.bytesOnDisk) / r.fp16Bytes).toFixed(1)}%)`,
    'metadata:',
    ...scalars,
    '',
  ];
  const w = Math.max(6, ...r.tensors.map((t) => t.name.length));
  lines.push(`${'tensor'.padEnd(w)}  ${'type'.padEnd(7)}  ${'shape'.padEnd(14)}  ${'bytes'.padStart(10)}  bits/weight`);
  for (const t of r.tensors)
    lines.push(
      `${t.name.padEnd(w)}  ${t.type.padEnd(7)}  ${`[${t.shape.join(', ')}]`.padEnd(14)}  ${String(t.bytes).padStart(10)}  ${t.bitsPerWeight.toFixed(3)}`,
    );
  return lines.join('\n');
}
