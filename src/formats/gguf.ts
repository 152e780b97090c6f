import { closeSync, openSync } from 'node:fs';
import { ggufTensorName, ropeRotated, type ModelConfig } from '../models/index.js';
import { fail } from '../io/errors.js';
import { floatToHalf } from '../io/fp16.js';
import { SafetensorsModel, writeAll } from '../io/safetensors.js';
import type { LlamaTokenizer } from '../io/tokenizer.js';
import type { QuantizedLayer } from '../quant/quantized-layer.js';

/**
 * GGUF (v3) export of a Llama model for llama.cpp. Quantized layers are carried over without re-rounding:
 * Q4_0 stores blocks of 32 weights as an fp16 scale d and levels d·(q − 8), q in 0..15, which is GPTQ's
 * symmetric 4-bit grid with 32-column groups; Q8_0 stores d·q, q in −128..127, GPTQ's symmetric 8-bit grid
 * (code − 128). Anything else cannot be held exactly and is refused.
 */

const GGML_TYPE = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8 } as const;
const FILE_TYPE = { 4: 2, 8: 7 } as const; // LLAMA_FTYPE_MOSTLY_Q4_0 / MOSTLY_Q8_0
const ALIGNMENT = 32;

enum ValueType {
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
}

type MetaValue =
  | { t: ValueType.UINT32 | ValueType.INT32 | ValueType.FLOAT32; v: number }
  | { t: ValueType.BOOL; v: boolean }
  | { t: ValueType.STRING; v: string }
  | { t: ValueType.ARRAY; elem: ValueType.STRING | ValueType.FLOAT32 | ValueType.INT32; v: (string | number)[] };

class ByteWriter {
  private chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  i32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }
  u64(v: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  pad(to: number): void {
    const n = (to - (this.length % to)) % to;
    if (n) this.push(Buffer.alloc(n));
  }
  value(m: MetaValue): void {
    this.u32(m.t);
    switch (m.t) {
      case ValueType.UINT32:
        return this.u32(m.v);
      case ValueType.INT32:
        return this.i32(m.v);
      case ValueType.FLOAT32:
        return this.f32(m.v);
      case ValueType.BOOL:
        return this.push(Buffer.from([m.v ? 1 : 0]));
      case ValueType.STRING:
        return this.str(m.v);
      case ValueType.ARRAY:
        this.u32(m.elem);
        this.u64(m.v.length);
        for (const x of m.v) {
          if (m.elem === ValueType.STRING) this.str(x as string);
          else if (m.elem === ValueType.FLOAT32) this.f32(x as number);
          else this.i32(x as number);
        }
    }
  }
  buffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

interface GgufTensor {
  name: string;
  /** row-major shape [rows, cols]; GGUF lists dimensions innermost first */
  shape: number[];
  type: number;
  data: Uint8Array;
}

/** Why quantization settings cannot go into GGUF exactly, or undefined when they can. */
export function ggufIncompatibility(o: {
  bits: number;
  groupSize: number;
  sym: boolean;
  actOrder: boolean;
  staticGroups: boolean;
}): string | undefined {
  if (o.bits !== 4 && o.bits !== 8) return `GGUF export holds 4-bit (Q4_0) or 8-bit (Q8_0) exactly, not ${o.bits}-bit`;
  if (o.groupSize !== 32) return `Q4_0/Q8_0 blocks are 32 columns: quantize with --group-size 32 (got ${o.groupSize})`;
  if (!o.sym) return 'Q4_0/Q8_0 are symmetric grids: quantize with --sym';
  if (o.actOrder && !o.staticGroups) return 'act-order groups are not contiguous blocks: add --static-groups';
  return undefined;
}

/**
 * What of a model the GGUF writer cannot express (it writes llama.cpp's "llama" architecture with default RoPE):
 * refused by name rather than written as a different model.
 */
export function ggufModelIncompatibility(cfg: ModelConfig): string | undefined {
  if (cfg.modelType !== 'llama' && cfg.modelType !== 'mistral')
    return `model_type ${cfg.modelType} is not written to GGUF yet (llama and mistral are)`;
  if (cfg.rope?.type !== 'default') return `rope type ${cfg.rope?.type} is not written to GGUF yet`;
  if (cfg.rope.dim !== cfg.headDim) return 'partial rotary embeddings are not written to GGUF yet';
  if (cfg.headDim * cfg.numHeads !== cfg.hiddenSize) return `head_dim ${cfg.headDim} differs from hidden_size / num_attention_heads`;
  if (cfg.biases.size > 0) return 'linear biases are not written to GGUF yet';
  if (cfg.activation !== 'silu') return `hidden_act ${cfg.activation} is not llama.cpp's llama (SiLU)`;
  for (let l = 0; l < cfg.numLayers; l++) if (cfg.slidingWindow(l)) return 'sliding-window attention is not written to GGUF yet';
  return undefined;
}

function layerIncompatibility(q: QuantizedLayer): string | undefined {
  const why = ggufIncompatibility({ ...q, actOrder: false, staticGroups: false });
  if (why) return why;
  for (let c = 0; c < q.cols; c++) if (q.gIdx[c] !== Math.floor(c / 32)) return `g_idx is not contiguous blocks of 32 (column ${c})`;
  return undefined;
}

function encodeBlocks(q: QuantizedLayer, rowOrder: Int32Array): Uint8Array {
  const { rows, cols, bits } = q;
  const G = cols / 32;
  const blockBytes = bits === 4 ? 18 : 34;
  const out = new Uint8Array(rows * G * blockBytes);
  const view = new DataView(out.buffer);
  let o = 0;
  for (let i = 0; i < rows; i++) {
    const r = rowOrder[i]!;
    for (let g = 0; g < G; g++) {
      view.setUint16(o, floatToHalf(q.scales[r * G + g]!), true);
      const base = r * cols + g * 32;
      if (bits === 4) {
        // first 16 values in the low nibbles, last 16 in the high nibbles
        for (let j = 0; j < 16; j++) out[o + 2 + j] = q.codes[base + j]! | (q.codes[base + 16 + j]! << 4);
      } else {
        for (let j = 0; j < 32; j++) view.setInt8(o + 2 + j, q.codes[base + j]! - 128);
      }
      o += blockBytes;
    }
  }
  return out;
}

/** llama.cpp's Llama rotary layout is Meta's interleaved pairs: undo Hugging Face's per-head halves order. */
function interleavedRowOrder(rows: number, heads: number): Int32Array {
  const hd = rows / heads;
  const order = new Int32Array(rows);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < hd / 2; i++) {
      order[h * hd + 2 * i] = h * hd + i;
      order[h * hd + 2 * i + 1] = h * hd + hd / 2 + i;
    }
  }
  return order;
}

function permuteRows(w: Float32Array, cols: number, order: Int32Array): Float32Array {
  const out = new Float32Array(w.length);
  order.forEach((src, i) => out.set(w.subarray(src * cols, (src + 1) * cols), i * cols));
  return out;
}

function tokenizerMetadata(tok: LlamaTokenizer): Record<string, MetaValue> {
  // llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined piece scores highest: a merge
  // of rank r scores −r, so it merges in exactly our order
  const scores = new Array<number>(tok.vocabSize).fill(0);
  const ranks = new Map<string, number>();
  for (const m of tok.spec.merges) if (!ranks.has(m.left + m.right)) ranks.set(m.left + m.right, m.rank);
  tok.pieces.forEach((p, i) => (scores[i] = ranks.has(p) ? -ranks.get(p)! : 0));
  const types = tok.pieces.map((p, i) => {
    if (i === tok.unk) return 2;
    if (i === tok.bos || i === tok.eos) return 3;
    return /^<0x[0-9A-F]{2}>$/.test(p) ? 6 : 1;
  });
  return {
    'tokenizer.ggml.model': { t: ValueType.STRING, v: 'llama' },
    'tokenizer.ggml.tokens': { t: ValueType.ARRAY, elem: ValueType.STRING, v: tok.pieces },
    'tokenizer.ggml.scores': { t: ValueType.ARRAY, elem: ValueType.FLOAT32, v: scores },
    'tokenizer.ggml.token_type': { t: ValueType.ARRAY, elem: ValueType.INT32, v: types },
    'tokenizer.ggml.bos_token_id': { t: ValueType.UINT32, v: tok.bos },
    'tokenizer.ggml.eos_token_id': { t: ValueType.UINT32, v: tok.eos },
    'tokenizer.ggml.unknown_token_id': { t: ValueType.UINT32, v: tok.unk },
    'tokenizer.ggml.add_bos_token': { t: ValueType.BOOL, v: tok.addsBos },
    'tokenizer.ggml.add_eos_token': { t: ValueType.BOOL, v: false },
  };
}

/**
 * Write `out` (a new .gguf file; the caller makes it appear atomically) from the source model directory and its
 * quantized layers. Non-quantized tensors stay float32, so llama.cpp runs exactly the weights our engine runs.
 */
export async function writeGguf(
  srcDir: string,
  cfg: ModelConfig,
  tokenizer: LlamaTokenizer,
  layers: ReadonlyMap<string, QuantizedLayer>,
  out: string,
  name = 'gptq-ts',
): Promise<void> {
  const bitsSet = new Set([...layers.values()].map((q) => q.bits));
  if (bitsSet.size !== 1) fail('GGUF export needs every layer at the same bit width');
  const bits = [...bitsSet][0]! as 4 | 8;
  for (const [n, q] of layers) {
    const why = layerIncompatibility(q);
    if (why) fail(`${n}: ${why}`);
  }
  const st = new SafetensorsModel(srcDir);
  const tensors: GgufTensor[] = [];
  try {
    for (const hf of st.names()) {
      const q = layers.get(hf);
      const { isQ, isK } = ropeRotated(hf);
      const heads = isQ ? cfg.numHeads : cfg.numKvHeads;
      if (q) {
        const order = isQ || isK ? interleavedRowOrder(q.rows, heads) : Int32Array.from({ length: q.rows }, (_, i) => i);
        tensors.push({
          name: ggufTensorName(hf),
          shape: [q.rows, q.cols],
          type: bits === 4 ? GGML_TYPE.Q4_0 : GGML_TYPE.Q8_0,
          data: encodeBlocks(q, order),
        });
      } else {
        const info = st.info(hf);
        let w = st.readFloat(hf, info.shape);
        if ((isQ || isK) && info.shape.length === 2) w = permuteRows(w, info.shape[1]!, interleavedRowOrder(info.shape[0]!, heads));
        tensors.push({
          name: ggufTensorName(hf),
          shape: info.shape,
          type: GGML_TYPE.F32,
          data: new Uint8Array(w.buffer, w.byteOffset, w.byteLength),
        });
      }
    }
  } finally {
    st.close();
  }
  const meta: Record<string, MetaValue> = {
    'general.architecture': { t: ValueType.STRING, v: 'llama' },
    'general.name': { t: ValueType.STRING, v: name },
    'general.alignment': { t: ValueType.UINT32, v: ALIGNMENT },
    'general.file_type': { t: ValueType.UINT32, v: FILE_TYPE[bits] },
    'llama.context_length': { t: ValueType.UINT32, v: cfg.maxPositions },
    'llama.embedding_length': { t: ValueType.UINT32, v: cfg.hiddenSize },
    'llama.block_count': { t: ValueType.UINT32, v: cfg.numLayers },
    'llama.feed_forward_length': { t: ValueType.UINT32, v: cfg.intermediateSize },
    'llama.rope.dimension_count': { t: ValueType.UINT32, v: cfg.hiddenSize / cfg.numHeads },
    'llama.attention.head_count': { t: ValueType.UINT32, v: cfg.numHeads },
    'llama.attention.head_count_kv': { t: ValueType.UINT32, v: cfg.numKvHeads },
    'llama.attention.layer_norm_rms_epsilon': { t: ValueType.FLOAT32, v: cfg.rmsNormEps },
    'llama.rope.freq_base': { t: ValueType.FLOAT32, v: cfg.rope!.theta },
    'llama.vocab_size': { t: ValueType.UINT32, v: cfg.vocabSize },
    ...tokenizerMetadata(tokenizer),
  };
  const head = new ByteWriter();
  head.u32(0x46554747); // "GGUF"
  head.u32(3);
  head.u64(tensors.length);
  head.u64(Object.keys(meta).length);
  for (const [k, v] of Object.entries(meta)) {
    head.str(k);
    head.value(v);
  }
  let offset = 0;
  for (const t of tensors) {
    head.str(t.name);
    head.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) head.u64(d);
    head.u32(t.type);
    head.u64(offset);
    offset += Math.ceil(t.data.length / ALIGNMENT) * ALIGNMENT;
  }
  head.pad(ALIGNMENT);
  const fd = openSync(out, 'wx');
  try {
    await writeAll(fd, head.buffer());
    for (const t of tensors) {
      await writeAll(fd, t.data);
      const pad = (ALIGNMENT - (t.data.length % ALIGNMENT)) % ALIGNMENT;
      if (pad) await writeAll(fd, Buffer.alloc(pad));
    }
  } finally {
    closeSync(fd);
  }
}
