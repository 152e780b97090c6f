import { closeSync, openSync } from 'node:fs';
import { ggufLayout, readLinear, type GgufScalar, type GgufTensorSource, type ModelConfig } from '../models/index.js';
import { fail } from '../io/errors.js';
import { SafetensorsModel, writeAll } from '../io/safetensors.js';
import { BLOCK_LAYOUTS, GGML_TYPES, packBlock, type BlockType } from './ggml-blocks.js';
import { GGML_TYPE_SIZES } from './gguf-read.js';
import type { HfTokenizer } from '../io/tokenizer.js';
import { PRE_TOKENIZERS, TOKEN_TYPE } from '../io/tokenizer/gguf.js';
import { blockTypeOf, layerBlock, type QuantizedLayer } from '../quant/quantized-layer.js';

/**
 * GGUF (v3) export for llama.cpp. Quantized layers are carried over without re-rounding: GPTQ's symmetric 4/8-bit
 * grid with 32-column groups is exactly Q4_0/Q8_0 (d·(q − 8), d·(q − 128)); a layer swept on a llama.cpp block
 * grid (--gguf-type: Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K) is stored with the factors it was swept with. Anything
 * else cannot be held exactly and is refused. Names, row orders and metadata come from models/gguf-layout.ts.
 */

const F32 = 0;
/** llama_ftype of a file whose linear layers are all of one type (the _S variant where llama-quantize has a mix) */
const FILE_TYPE: Record<BlockType, number> = {
  Q4_0: 2,
  Q4_1: 3,
  Q8_0: 7,
  Q5_0: 8,
  Q5_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 14,
  Q5_K: 16,
  Q6_K: 18,
  IQ4_NL: 25,
};
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
  /** made when its turn to be written comes, so that one tensor's data is in memory at a time (the header's offsets
   * come from each tensor's type and shape) */
  data: () => Uint8Array;
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

function layerIncompatibility(q: QuantizedLayer): string | undefined {
  const why = ggufIncompatibility({ ...q, actOrder: false, staticGroups: false });
  if (why) return why;
  for (let c = 0; c < q.cols; c++) if (q.gIdx[c] !== Math.floor(c / 32)) return `g_idx is not contiguous blocks of 32 (column ${c})`;
  return undefined;
}

/** The block type a layer is written as: its own block grid, or GPTQ's symmetric 4/8-bit g32 grid as Q4_0/Q8_0. */
function fileBlockType(q: QuantizedLayer): BlockType {
  return blockTypeOf(q) ?? (q.bits === 4 ? 'Q4_0' : 'Q8_0');
}

/**
 * A layer's rows as blocks of its type, rows in the file's order. GPTQ's Q4_0/Q8_0 grid: each 32-column group is
 * one block (d = its scale, codes as stored); a block grid's factors are stored as fitted.
 */
function encodeBlocks(q: QuantizedLayer, rowOrder: Int32Array | undefined): Uint8Array {
  const type = fileBlockType(q);
  const { rows, cols } = q;
  const L = BLOCK_LAYOUTS[type];
  const per = cols / L.size;
  const out = new Uint8Array(rows * per * L.bytes);
  const none = new Int32Array(0);
  for (let i = 0; i < rows; i++) {
    const r = rowOrder ? rowOrder[i]! : i;
    for (let g = 0; g < per; g++) {
      const k = r * per + g;
      const block =
        q.ggmlType !== undefined
          ? layerBlock(q, k)
          : { d: q.scales[k]!, m: 0, scales: none, mins: none, codes: q.codes.subarray(k * 32, k * 32 + 32) };
      packBlock(type, block, out, (i * per + g) * L.bytes);
    }
  }
  return out;
}

/** A float tensor as llama.cpp's file holds it: rows reordered, Gemma's norms shifted to 1 + w. */
function floatTensor(w: Float32Array, shape: number[], t: GgufTensorSource): Float32Array {
  let out = w;
  if (t.rowOrder) {
    const cols = shape.length === 2 ? shape[1]! : 1;
    out = new Float32Array(w.length);
    t.rowOrder.forEach((src, i) => out.set(w.subarray(src * cols, (src + 1) * cols), i * cols));
  }
  if (t.addOne) out = out.map((x) => x + 1);
  return out;
}

/** A JSON value with object keys sorted and offset-only fields dropped, for comparing specs. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (k, x: unknown) =>
    k === 'trim_offsets'
      ? undefined
      : x && typeof x === 'object' && !Array.isArray(x)
        ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => a.localeCompare(b)))
        : x,
  );
}

/** Normalizers llama.cpp's SentencePiece tokenizer runs: spaces to "▁", with or without a leading "▁". */
function sentencePieceSpaces(tok: HfTokenizer): { addSpacePrefix: boolean } | undefined {
  const replace = { type: 'Replace', pattern: { String: ' ' }, content: SPACE };
  const prepend = { type: 'Prepend', prepend: SPACE };
  const norm = canonical(tok.normalizerSpec);
  // Gemma 3 splits on spaces after they became "▁": a no-op
  const pre =
    tok.preTokenizerSpec === null ||
    canonical(tok.preTokenizerSpec) ===
      canonical({ type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithPrevious', invert: false });
  if (!pre) return undefined;
  if (norm === canonical({ type: 'Sequence', normalizers: [prepend, replace] })) return { addSpacePrefix: true };
  if (norm === canonical(replace) || norm === canonical({ type: 'Sequence', normalizers: [replace] })) return { addSpacePrefix: false };
  return undefined;
}

const SPACE = '\u2581';

/**
 * The tokenizer as llama.cpp's vocabulary: SentencePiece-style BPE with byte fallback as its "llama" model, byte-level
 * BPE as its "gpt2" model with the pre-tokenizer named. Anything llama.cpp would tokenize differently is refused.
 * A model whose embedding has more rows than the tokenizer has ids gets unused "[PADi]" tokens up to `vocabSize`
 * (llama.cpp requires one token per row), as llama.cpp's converter pads them.
 */
function tokenizerMetadata(tok: HfTokenizer, vocabSize = tok.vocabSize): { meta: Record<string, MetaValue>; notes: string[] } {
  const pad = Array.from({ length: Math.max(0, vocabSize - tok.vocabSize) }, (_, i) => `[PAD${tok.vocabSize + i}]`);
  const u32 = (v: number): MetaValue => ({ t: ValueType.UINT32, v });
  const type = (i: number): number => {
    if (i === tok.unkId) return TOKEN_TYPE.UNKNOWN;
    if (tok.isSpecial(i) || i === tok.bosId || tok.eosIds.includes(i)) return TOKEN_TYPE.CONTROL;
    if (tok.addedIds.has(i)) return TOKEN_TYPE.USER_DEFINED;
    return tok.byteFallbackIds.has(i) ? TOKEN_TYPE.BYTE : TOKEN_TYPE.NORMAL;
  };
  const meta: Record<string, MetaValue> = {};
  const notes: string[] = [];
  if (tok.kind === 'sentencepiece-bpe') {
    const spm = sentencePieceSpaces(tok);
    if (!spm) fail(`${tok.source}: its normalizer/pre_tokenizer is not the space handling of llama.cpp's SentencePiece tokenizer`);
    // llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined piece scores highest: a merge
    // of rank r scores −r, so it merges in exactly our order
    const ranks = new Map<string, number>();
    for (const m of tok.mergeList) if (!ranks.has(m.left + m.right)) ranks.set(m.left + m.right, m.rank);
    meta['tokenizer.ggml.model'] = { t: ValueType.STRING, v: 'llama' };
    meta['tokenizer.ggml.scores'] = {
      t: ValueType.ARRAY,
      elem: ValueType.FLOAT32,
      v: [...tok.pieces.map((p) => -(ranks.get(p) ?? 0)), ...pad.map(() => 0)],
    };
    meta['tokenizer.ggml.add_space_prefix'] = { t: ValueType.BOOL, v: spm.addSpacePrefix };
  } else if (tok.kind === 'byte-level-bpe') {
    const spec = canonical(tok.preTokenizerSpec);
    const pre = PRE_TOKENIZERS.find((p) => canonical(p.spec) === spec && p.ignoreMerges === tok.ignoresMerges);
    if (!pre) fail(`${tok.source}: its pre_tokenizer is none of llama.cpp's (${PRE_TOKENIZERS.map((p) => p.name).join(', ')})`);
    const norm = canonical(tok.normalizerSpec);
    // Qwen's NFC is the one normalizer llama.cpp's converter lets through: text already in NFC (most text) is unchanged
    if (norm === canonical({ type: 'NFC' }))
      notes.push(`${tok.source}: llama.cpp does not NFC-normalize, so text not already in NFC tokenizes differently there`);
    else if (norm !== canonical(null) && norm !== canonical({ type: 'Sequence', normalizers: [] }))
      fail(`${tok.source}: llama.cpp's byte-level BPE runs no normalizer (this one has ${norm.slice(0, 60)})`);
    meta['tokenizer.ggml.model'] = { t: ValueType.STRING, v: 'gpt2' };
    meta['tokenizer.ggml.pre'] = { t: ValueType.STRING, v: pre.name };
    const merges = [...tok.mergeList].sort((a, b) => a.rank - b.rank).map((m) => `${m.left} ${m.right}`);
    meta['tokenizer.ggml.merges'] = { t: ValueType.ARRAY, elem: ValueType.STRING, v: merges };
  } else {
    fail(`${tok.source}: a ${tok.kind} tokenizer (neither byte-level nor with byte fallback) has no llama.cpp vocabulary type`);
  }
  meta['tokenizer.ggml.tokens'] = { t: ValueType.ARRAY, elem: ValueType.STRING, v: [...tok.pieces, ...pad] };
  meta['tokenizer.ggml.token_type'] = {
    t: ValueType.ARRAY,
    elem: ValueType.INT32,
    v: [...tok.pieces.map((_, i) => type(i)), ...pad.map(() => TOKEN_TYPE.UNUSED)],
  };
  if (tok.bosId !== undefined) meta['tokenizer.ggml.bos_token_id'] = u32(tok.bosId);
  if (tok.eosIds[0] !== undefined) meta['tokenizer.ggml.eos_token_id'] = u32(tok.eosIds[0]);
  if (tok.unkId !== undefined) meta['tokenizer.ggml.unknown_token_id'] = u32(tok.unkId);
  if (tok.padId !== undefined) meta['tokenizer.ggml.padding_token_id'] = u32(tok.padId);
  meta['tokenizer.ggml.add_bos_token'] = { t: ValueType.BOOL, v: tok.addsBos };
  meta['tokenizer.ggml.add_eos_token'] = { t: ValueType.BOOL, v: false };
  return { meta, notes };
}

/**
 * Refuses, naming the reason, a tokenizer llama.cpp would run differently (before any work is done); returns what
 * the user should know about the differences it accepts.
 */
export function checkGgufTokenizer(tok: HfTokenizer): string[] {
  return tokenizerMetadata(tok).notes;
}

function metaValue(v: GgufScalar): MetaValue {
  if (typeof v === 'string') return { t: ValueType.STRING, v };
  if (typeof v === 'boolean') return { t: ValueType.BOOL, v };
  return 'u32' in v ? { t: ValueType.UINT32, v: v.u32 } : { t: ValueType.FLOAT32, v: v.f32 };
}

/**
 * Write `out` (a new .gguf file; the caller makes it appear atomically) from the source model directory and its
 * quantized layers. Non-quantized tensors stay float32, so llama.cpp runs exactly the weights our engine runs.
 */
export async function writeGguf(
  srcDir: string,
  cfg: ModelConfig,
  tokenizer: HfTokenizer,
  layers: ReadonlyMap<string, QuantizedLayer>,
  out: string,
  options: {
    name?: string;
    /** write linear layers missing from `layers` as float32 (a float model for llama-quantize), instead of refusing */
    floatLinears?: boolean;
    /** general.file_type (a llama-quantize mix's llama_ftype), instead of the type of most weights */
    fileType?: number;
  } = {},
): Promise<string[]> {
  // one pass over the layers (spilled ones are read from disk): each holdable exactly, its type and shape kept for
  // the header, and the file's type is that of most of its weights
  const counts = new Map<BlockType, number>();
  const kept = new Map<string, { rows: number; cols: number; type: BlockType }>();
  for (const [n, q] of layers) {
    const why = q.ggmlType !== undefined ? undefined : layerIncompatibility(q);
    if (why) fail(`${n}: ${why}`);
    const type = fileBlockType(q);
    kept.set(n, { rows: q.rows, cols: q.cols, type });
    counts.set(type, (counts.get(type) ?? 0) + q.rows * q.cols);
  }
  const mostly = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0];
  const layout = ggufLayout(cfg);
  const vocab = tokenizerMetadata(tokenizer, cfg.vocabSize).meta;
  const st = new SafetensorsModel(srcDir);
  try {
    const tensors: GgufTensor[] = [];
    for (const t of layout.tensors) {
      const q = kept.get(t.source);
      if (q) {
        tensors.push({
          name: t.name,
          shape: [q.rows, q.cols],
          type: GGML_TYPES[q.type],
          data: () => encodeBlocks(layers.get(t.source)!, t.rowOrder),
        });
        continue;
      }
      if (t.linear && !options.floatLinears) fail(`GGUF export: ${t.source} is a linear layer that was not quantized`);
      // linear weights [out, in] whatever the checkpoint's layout (GPT-2's Conv1D stores [in, out])
      const stored = st.info(t.source).shape;
      const shape = t.linear ? [cfg.transposedLinears ? stored[1]! : stored[0]!, cfg.transposedLinears ? stored[0]! : stored[1]!] : stored;
      tensors.push({
        name: t.name,
        shape,
        type: F32,
        data: () => {
          const raw = t.linear ? readLinear(st, cfg, t.source, shape as [number, number]) : st.readFloat(t.source, shape);
          const w = floatTensor(raw, shape, t);
          return new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
        },
      });
    }
    for (const g of layout.generated) {
      const data = new Uint8Array(g.data.buffer, g.data.byteOffset, g.data.byteLength);
      tensors.push({ name: g.name, shape: [g.data.length], type: F32, data: () => data });
    }
    const arch = layout.arch;
    const meta: Record<string, MetaValue> = {
      'general.architecture': { t: ValueType.STRING, v: arch },
      'general.name': { t: ValueType.STRING, v: options.name ?? 'gptq-ts' },
      'general.alignment': { t: ValueType.UINT32, v: ALIGNMENT },
      // LLAMA_FTYPE_ALL_F32 when nothing is quantized
      'general.file_type': { t: ValueType.UINT32, v: options.fileType ?? (mostly ? FILE_TYPE[mostly] : 0) },
      ...Object.fromEntries(Object.entries(layout.metadata).map(([k, v]) => [`${arch}.${k}`, metaValue(v)])),
      ...vocab,
    };
    await writeFile(out, meta, tensors);
  } finally {
    st.close();
  }
  return layout.notes;
}

/**
 * A vocabulary-only GGUF (as llama.cpp's own ggml-vocab-*.gguf files): the tokenizer's metadata and no tensors, for
 * running llama.cpp's tokenizer on it (llama_model_load with vocab_only).
 */
export async function writeGgufVocab(tokenizer: HfTokenizer, out: string): Promise<void> {
  await writeFile(out, { 'general.architecture': { t: ValueType.STRING, v: 'llama' }, ...tokenizerMetadata(tokenizer).meta }, []);
}

/** A tensor's bytes in the file, by the same table the reader checks files against */
function tensorBytes(t: GgufTensor): number {
  const ti = GGML_TYPE_SIZES[t.type]!;
  return (t.shape.reduce((a, b) => a * b, 1) / ti.block) * ti.bytes;
}

async function writeFile(out: string, meta: Record<string, MetaValue>, tensors: GgufTensor[]): Promise<void> {
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
    offset += Math.ceil(tensorBytes(t) / ALIGNMENT) * ALIGNMENT;
  }
  head.pad(ALIGNMENT);
  const fd = openSync(out, 'wx');
  try {
    await writeAll(fd, head.buffer());
    for (const t of tensors) {
      const data = t.data();
      if (data.length !== tensorBytes(t))
        throw new Error(`GGUF writer: ${t.name} made ${data.length} bytes, its header says ${tensorBytes(t)}`);
      await writeAll(fd, data);
      const pad = (ALIGNMENT - (data.length % ALIGNMENT)) % ALIGNMENT;
      if (pad) await writeAll(fd, Buffer.alloc(pad));
    }
  } finally {
    closeSync(fd);
  }
}
