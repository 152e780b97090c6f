import { fail } from '../io/errors.js';
import { firstNonFinite16, halfArrayToFloat } from '../io/fp16.js';
import { SafetensorsModel, type TensorReader } from '../io/safetensors.js';
import {
  floatRows,
  headLogits,
  rowsF32,
  widenRowsInto,
  type AttentionShape,
  type Backend,
  type HalfKvCache,
  type KvShape,
  type LinearKernel,
  type ResidualMlpKernel,
  type StoredRows,
} from '../tensor/index.js';
import { activate, gatedActivation, layerNorm, transpose } from '../tensor/ref.js';
import type { LinearRoles, ModelConfig, TensorLayout } from './config.js';
import { Rope } from './rope.js';
import { head16Fits, openHead16, type Head16 } from '../tensor/head16.js';
import { readModelConfig } from './registry.js';

/**
 * The decoder the families share: a stack of blocks, each attention then an MLP, with what a family's config
 * selects: tensor names, fused or split projections, gated or plain MLP, RMSNorm or LayerNorm before and/or after
 * each part (or on the residual stream, OPT's post-norm), biases, q/k norms, RoPE variants or learned positions,
 * sliding windows, soft-capping and Granite's multipliers.
 */

const ATTENTION_CHUNK = 16;

/** A linear layer's tensor name within a block (after the layer prefix), e.g. self_attn.q_proj. */
export type LinearName = string;

/** The Llama layout's names: the default of every Llama-like family. */
export const LLAMA_LINEAR: LinearRoles = {
  q: 'self_attn.q_proj',
  k: 'self_attn.k_proj',
  v: 'self_attn.v_proj',
  o: 'self_attn.o_proj',
  gate: 'mlp.gate_proj',
  up: 'mlp.up_proj',
  down: 'mlp.down_proj',
  qkv: 'self_attn.qkv_proj',
  gateUp: 'mlp.gate_up_proj',
};

/**
 * The block's linear layers in true-sequential groups, each group's inputs depending on the one before:
 * [q,k,v] (or qkv) → [o] → [gate,up] (or gate_up; or the plain MLP's up) → [down].
 */
export function linearGroups(cfg: ModelConfig): string[][] {
  const L = cfg.linear;
  const attention = cfg.fusedQkv !== 'none' ? [L.qkv!] : [L.q, L.k, L.v];
  const mlp = cfg.fusedGateUp ? [L.gateUp!] : cfg.mlp === 'gated' ? [L.gate!, L.up] : [L.up];
  return [attention, [L.o], mlp, [L.down]];
}

/** The block's norm weights by tensor name (after `model.layers.N.`), with their lengths. */
export function normShapes(cfg: ModelConfig): [string, number][] {
  const D = cfg.hiddenSize;
  const { attnIn, attnOut, mlpIn, mlpOut, attnResidual, mlpResidual } = cfg.norms;
  // one norm may serve both attention and the MLP (Falcon-7B's parallel block)
  const norms = [...new Set([attnIn, attnOut, mlpIn, mlpOut, attnResidual, mlpResidual])]
    .filter((n): n is string => n !== undefined)
    .map((n): [string, number] => [n, D]);
  if (cfg.qkNorm === 'head') norms.push(['self_attn.q_norm', cfg.headDim], ['self_attn.k_norm', cfg.headDim]);
  if (cfg.qkNorm === 'full')
    norms.push(['self_attn.q_norm', cfg.numHeads * cfg.headDim], ['self_attn.k_norm', cfg.numKvHeads * cfg.headDim]);
  return norms;
}

/** The Llama layout's tensor names outside the blocks. */
export const EMBED = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const HEAD = 'lm_head.weight';
export const LLAMA_TENSORS: TensorLayout = { embed: EMBED, finalNorm: FINAL_NORM, head: HEAD, layers: 'model.layers.' };
export const layerPrefix = (cfg: ModelConfig, i: number): string => `${cfg.tensors.layers}${i}.`;
/** Block i's linear weights by tensor name, in linearGroups' order. */
export const blockLinearWeights = (cfg: ModelConfig, i: number): string[] =>
  linearGroups(cfg)
    .flat()
    .map((n) => `${layerPrefix(cfg, i)}${n}.weight`);

interface BlockCommon {
  norms: Record<string, Float32Array>;
  /** LayerNorm biases, by the same names */
  normBias: Record<string, Float32Array>;
  /** biases of the linear layers that have one */
  bias: Partial<Record<LinearName, Float32Array>>;
}

export interface BlockWeights extends BlockCommon {
  /** each [out, in] */
  linear: Partial<Record<LinearName, Float32Array>>;
}

/**
 * A block ready for inference: its linear layers as prepared kernels. Layers that share an input are one
 * stacked kernel when their layouts allow ([q; k; v], [gate; up]), else one kernel each, in that order.
 */
export interface PreparedBlock extends BlockCommon {
  qkv: LinearKernel[];
  /** o, gateUp and down, or in a plain pre-norm block with packed layers, `tail` in their place */
  o?: LinearKernel;
  gateUp?: LinearKernel[];
  down?: LinearKernel;
  /** everything after attention as one kernel (Backend.packedResidualMlp) */
  tail?: ResidualMlpKernel;
}

function preparedKernels(b: PreparedBlock): (LinearKernel | ResidualMlpKernel)[] {
  return [...b.qkv, ...(b.o ? [b.o] : []), ...(b.gateUp ?? []), ...(b.down ? [b.down] : []), ...(b.tail ? [b.tail] : [])];
}

/** Bytes of weights a prepared block's kernels hold. */
export function preparedBytes(b: PreparedBlock): number {
  return preparedKernels(b).reduce((s, k) => s + k.weightBytes, 0);
}

/** Frees the engine's copies of a prepared block's weights (a streamed block, once every window has been through it). */
export async function disposeBlock(b: PreparedBlock): Promise<void> {
  await Promise.all(preparedKernels(b).map((k) => k.dispose()));
}

/** One output per part of `widths`: the outputs as they are, or a single stacked or fused output split by column. */
function splitParts(outputs: Float32Array[], rows: number, widths: number[]): Float32Array[] {
  if (outputs.length === widths.length) return outputs;
  const y = outputs[0]!;
  const total = widths.reduce((a, b) => a + b, 0);
  let c0 = 0;
  return widths.map((w) => {
    const part = new Float32Array(rows * w);
    for (let r = 0; r < rows; r++) part.set(y.subarray(r * total + c0, r * total + c0 + w), r * w);
    c0 += w;
    return part;
  });
}

/**
 * q, k, v from a fused output whose columns run per kv head: its `group` query heads, then its k and v head
 * (Falcon's new architecture; with group 1 this is BLOOM's and GPT-NeoX's q_h | k_h | v_h per head).
 */
function splitGrouped(y: Float32Array, rows: number, heads: number, kvHeads: number, hd: number): Float32Array[] {
  const group = heads / kvHeads;
  const q = new Float32Array(rows * heads * hd);
  const k = new Float32Array(rows * kvHeads * hd);
  const v = new Float32Array(rows * kvHeads * hd);
  const width = (heads + 2 * kvHeads) * hd;
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < kvHeads; j++) {
      const src = r * width + j * (group + 2) * hd;
      q.set(y.subarray(src, src + group * hd), (r * heads + j * group) * hd);
      k.set(y.subarray(src + group * hd, src + (group + 1) * hd), (r * kvHeads + j) * hd);
      v.set(y.subarray(src + (group + 1) * hd, src + (group + 2) * hd), (r * kvHeads + j) * hd);
    }
  }
  return [q, k, v];
}

function addBias(y: Float32Array, bias: Float32Array | undefined): Float32Array {
  if (!bias) return y;
  const n = bias.length;
  for (let i = 0; i < y.length; i++) y[i]! += bias[i % n]!;
  return y;
}

/**
 * ALiBi's slopes as BLOOM computes them (float32): a geometric series over the nearest power of two of heads,
 * the remaining heads interleaved from the next power's series.
 */
export function alibiSlopes(heads: number): Float32Array {
  const closest = 2 ** Math.floor(Math.log2(heads));
  const base = Math.fround(2 ** -(2 ** -(Math.log2(closest) - 3)));
  const slopes = Array.from({ length: closest }, (_, i) => base ** (i + 1));
  if (closest !== heads) {
    const extra = Math.fround(2 ** -(2 ** -(Math.log2(2 * closest) - 3)));
    const remaining = Math.min(closest, heads - closest);
    for (let i = 0; i < remaining; i++) slopes.push(extra ** (2 * i + 1));
  }
  return Float32Array.from(slopes);
}

/** cap·tanh(x/cap) in place (Gemma 2's soft-capping); no cap, no change */
export function softcap(x: Float32Array, cap: number | undefined): Float32Array {
  if (cap) for (let i = 0; i < x.length; i++) x[i] = cap * Math.tanh(x[i]! / cap);
  return x;
}

/** [out, in] shape of each linear layer */
export function linearShape(cfg: ModelConfig, name: LinearName): [number, number] {
  const D = cfg.hiddenSize;
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  const L = cfg.linear;
  if (cfg.fusedQkv !== 'none' && name === L.qkv) return [q + 2 * kv, D];
  if (cfg.fusedGateUp && name === L.gateUp) return [2 * cfg.intermediateSize, D];
  switch (name) {
    case L.q:
      return [q, D];
    case L.k:
    case L.v:
      return [kv, D];
    case L.o:
      return [D, q];
    case L.gate:
    case L.up:
      return [cfg.intermediateSize, D];
    case L.down:
      return [D, cfg.intermediateSize];
  }
  throw new Error(`${name} is not a linear layer of ${cfg.modelType}`);
}

/** The norms and biases of block i (what is not a linear layer's weight). */
export function readBlockExtras(st: TensorReader, cfg: ModelConfig, i: number): BlockCommon {
  const p = layerPrefix(cfg, i);
  const norms: Record<string, Float32Array> = {};
  const normBias: Record<string, Float32Array> = {};
  for (const [name, n] of normShapes(cfg)) {
    norms[name] = readNorm(st, cfg, `${p}${name}.weight`, n);
    if (cfg.normKind === 'layer') normBias[name] = st.readFloat(`${p}${name}.bias`, [n]);
  }
  const bias: BlockCommon['bias'] = {};
  for (const group of linearGroups(cfg)) {
    for (const name of group) if (cfg.biases.has(name)) bias[name] = st.readFloat(`${p}${name}.bias`, [linearShape(cfg, name)[0]]);
  }
  return { norms, normBias, bias };
}

/** An RMSNorm weight as the decoder multiplies by it: Gemma's (1 + w) is formed here, in float32 as transformers does. */
export function readNorm(st: TensorReader, cfg: ModelConfig, name: string, n: number): Float32Array {
  const w = st.readFloat(name, [n]);
  if (cfg.normOffset) for (let i = 0; i < n; i++) w[i] = Math.fround(1 + w[i]!);
  return w;
}

/** A float linear weight as [out, in], whichever way the checkpoint stores it. */
export function readLinear(st: TensorReader, cfg: ModelConfig, tensor: string, [rows, cols]: [number, number]): Float32Array {
  return cfg.transposedLinears ? transpose(st.readFloat(tensor, [cols, rows]), cols, rows) : st.readFloat(tensor, [rows, cols]);
}

/** A linear weight [rows=out, cols=in] as the checkpoint stores it (GPT-2's Conv1D: [in, out]). */
export function storedLinear(cfg: ModelConfig, w: Float32Array, rows: number, cols: number): { shape: number[]; data: Float32Array } {
  return cfg.transposedLinears ? { shape: [cols, rows], data: transpose(w, rows, cols) } : { shape: [rows, cols], data: w };
}

/** One block's float weights (the quantizer's input; inference loads prepared kernels, see load.ts). */
export function readBlock(st: TensorReader, cfg: ModelConfig, i: number): BlockWeights {
  const p = layerPrefix(cfg, i);
  const linear: BlockWeights['linear'] = {};
  for (const group of linearGroups(cfg))
    for (const name of group) linear[name] = readLinear(st, cfg, `${p}${name}.weight`, linearShape(cfg, name));
  return { ...readBlockExtras(st, cfg, i), linear };
}

/**
 * A token embedding table [vocab, width] (and an LM head): float32, or 16-bit as the checkpoint stores it, widened a
 * row at a time as tokens are looked up (half the memory of a float32 copy: 1 GB of Llama 3's 2.1).
 */
export type Embedding = StoredRows;

export const floatEmbedding = floatRows;

/** A vocabulary table as stored when it is 16-bit (checked for shape and NaN/Inf as readFloat checks), else float32. */
export function readEmbedding(st: TensorReader, name: string, shape: [number, number]): Embedding {
  const info = st.info(name);
  if (info.dtype !== 'F16' && info.dtype !== 'BF16') return floatEmbedding(st.readFloat(name, shape));
  if (info.shape.length !== 2 || info.shape[0] !== shape[0] || info.shape[1] !== shape[1]) st.readFloat(name, shape);
  const data = st.read(name).data as Uint16Array;
  const bad = firstNonFinite16(data, info.dtype === 'BF16' ? 0x7f80 : 0x7c00);
  if (bad >= 0) fail(`${info.file}: tensor ${name} contains NaN/Inf at element ${bad}`);
  return { dtype: info.dtype, data };
}

/** The first element at which two [rows, cols] tables differ in value (widened a row at a time), or -1. */
function firstDifference(a: StoredRows, b: StoredRows, rows: number, cols: number): number {
  const ra = new Float32Array(cols);
  const rb = new Float32Array(cols);
  for (let r = 0; r < rows; r++) {
    widenRowsInto(a, r, r + 1, cols, ra);
    widenRowsInto(b, r, r + 1, cols, rb);
    const j = ra.findIndex((v, i) => v !== rb[i]);
    if (j >= 0) return r * cols + j;
  }
  return -1;
}

/** What a decoder holds outside its blocks. */
export interface OuterWeights {
  /** [vocab, embedDim] */
  embed: Embedding;
  /** learned position embeddings [positions + offset, hidden] (OPT), when the family has them */
  positions?: Float32Array;
  /** BLOOM's LayerNorm of the embeddings */
  embedNorm?: Float32Array;
  embedNormBias?: Float32Array;
  /** OPT-350m's projections between the embedding width and the hidden width */
  projectIn?: Float32Array;
  projectOut?: Float32Array;
  finalNorm?: Float32Array;
  finalNormBias?: Float32Array;
  /** [vocab, embedDim]: lm_head (16-bit as stored, or float32), or the embedding itself when tied; empty when quantized */
  head: StoredRows;
  /** a quantized lm_head (GPTQ's `lm_head: true`) as its checkpoint's linear kernel, in place of `head` */
  headKernel?: LinearKernel;
}

/** What turns the last block's output into the head's input: the final norm and OPT-350m's projection down. */
export type FinalWeights = Pick<OuterWeights, 'finalNorm' | 'finalNormBias' | 'projectOut'>;

export function readFinal(st: TensorReader, cfg: ModelConfig): FinalWeights {
  const T = cfg.tensors;
  const D = cfg.hiddenSize;
  const out: FinalWeights = {};
  if (T.projectOut) out.projectOut = st.readFloat(T.projectOut, [cfg.embedDim, D]);
  if (T.finalNorm) {
    out.finalNorm = readNorm(st, cfg, T.finalNorm, D);
    if (cfg.normKind === 'layer') out.finalNormBias = st.readFloat(T.finalNorm.replace(/weight$/, 'bias'), [D]);
  }
  return out;
}

/**
 * The weights outside the blocks. The head is lm_head, or the embedding when tied: an untied checkpoint without
 * a head is refused, and a tied one that also stores a head must store the embedding itself there. Without
 * `withHead` (the quantizer only embeds; a quantized head is a kernel, made by the loader) an untied head is not
 * read and `head` is empty.
 */
export function readOuter(st: TensorReader, cfg: ModelConfig, withHead = true): OuterWeights {
  const T = cfg.tensors;
  const E = cfg.embedDim;
  const D = cfg.hiddenSize;
  // one table when tied: the head is the embedding object itself, as stored
  const embed = readEmbedding(st, T.embed, [cfg.vocabSize, E]);
  const outer: OuterWeights = { embed, head: embed, ...readFinal(st, cfg) };
  if (T.positions) outer.positions = st.readFloat(T.positions, [cfg.maxPositions + (cfg.positionOffset ?? 0), D]);
  if (T.embedNorm) {
    outer.embedNorm = st.readFloat(T.embedNorm, [E]);
    outer.embedNormBias = st.readFloat(T.embedNorm.replace(/weight$/, 'bias'), [E]);
  }
  if (T.projectIn) outer.projectIn = st.readFloat(T.projectIn, [D, E]);
  if (!cfg.tieWordEmbeddings) outer.head = withHead ? readEmbedding(st, T.head, [cfg.vocabSize, E]) : floatRows(new Float32Array(0));
  else if (withHead && st.has(T.head)) {
    const i = firstDifference(readEmbedding(st, T.head, [cfg.vocabSize, E]), embed, cfg.vocabSize, E);
    if (i >= 0) fail(`${st.dir}: tie_word_embeddings is true but ${T.head} differs from ${T.embed} (element ${i}): which one is meant?`);
  }
  return outer;
}

/** Buffers some checkpoints carry that the forward pass recomputes (old Llama exports' RoPE frequencies). */
const IGNORABLE = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

/**
 * Every tensor of the checkpoint must be one this config reads, and every one it reads must be there: a layer
 * beyond num_hidden_layers, a stray or duplicated weight, a missing head are refused up front, by name.
 * `linear` names the tensors a linear layer is stored as (a float weight, or a quantized format's tensors);
 * with `quantizedHead` the (untied) head is stored that way too.
 */
export function checkTensorNames(
  st: TensorReader,
  cfg: ModelConfig,
  linear: (weightName: string) => { required: string[]; optional?: string[] },
  quantizedHead = false,
): void {
  const T = cfg.tensors;
  const present = st.names();
  // a config claiming more layers than are stored is refused before listing what every claimed layer would hold
  const stored = new Set(present.filter((n) => n.startsWith(T.layers)).map((n) => n.slice(T.layers.length).split('.')[0]));
  if (cfg.numLayers > stored.size) {
    fail(
      `${st.dir}: missing tensors ${T.layers}${stored.size}.* (config.json says ${cfg.numLayers} layers; the checkpoint holds ${stored.size})`,
    );
  }
  const required = new Set<string>([T.embed]);
  for (const name of [T.positions, T.projectIn, T.projectOut, T.finalNorm, T.embedNorm]) if (name) required.add(name);
  if (T.finalNorm && cfg.normKind === 'layer') required.add(T.finalNorm.replace(/weight$/, 'bias'));
  if (T.embedNorm) required.add(T.embedNorm.replace(/weight$/, 'bias'));
  const optional = new Set<string>();
  if (quantizedHead) {
    const t = linear(T.head);
    t.required.forEach((n) => required.add(n));
    t.optional?.forEach((n) => optional.add(n));
  } else if (cfg.tieWordEmbeddings) optional.add(T.head);
  else required.add(T.head);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = layerPrefix(cfg, i);
    for (const [name] of normShapes(cfg)) {
      required.add(`${p}${name}.weight`);
      if (cfg.normKind === 'layer') required.add(`${p}${name}.bias`);
    }
    for (const group of linearGroups(cfg)) {
      for (const name of group) {
        const t = linear(`${p}${name}.weight`);
        t.required.forEach((n) => required.add(n));
        t.optional?.forEach((n) => optional.add(n));
        if (cfg.biases.has(name)) required.add(`${p}${name}.bias`);
      }
    }
  }
  const extra = present.filter((n) => !required.has(n) && !optional.has(n) && !IGNORABLE.test(n));
  const missing = [...required].filter((n) => !st.has(n));
  const list = (names: string[]): string => names.slice(0, 3).join(', ') + (names.length > 3 ? ` and ${names.length - 3} more` : '');
  const gptqInstead = missing.find((n) => n.endsWith('.weight') && st.has(n.replace(/weight$/, 'qweight')));
  if (gptqInstead) {
    fail(`${st.dir}: holds GPTQ tensors (${gptqInstead.replace(/weight$/, 'qweight')}) but no quantization_config says how to read them`);
  }
  if (missing.length > 0) fail(`${st.dir}: missing tensor ${list(missing)} (a ${cfg.numLayers}-layer ${cfg.modelType} checkpoint)`);
  if (extra.length > 0) {
    fail(`${st.dir}: tensor ${list(extra)} is not part of a ${cfg.numLayers}-layer ${cfg.modelType} model as config.json describes it`);
  }
}

/**
 * Keys and values of past positions for incremental decoding, per layer and head-major (one sequence). Storage
 * grows with the sequence, up to `capacity` positions: a short generation in a long-context model holds what it
 * uses, not the whole context. It grows by a quarter (in whole steps of 16 rows), not by doubling: a decode step
 * reads every row held (those past the sequence masked), so spare rows cost every step and a copy costs once (each
 * position is copied about four times). Llama-2-7B w4, 32 tokens after a 5-token prompt, attention a token: 8.8-9.1 ms
 * in steps of 64 rows against 7.5 for the position-major graph over the positions alone; in steps of 16, 6.2-6.6
 * against 8.3-8.4.
 */
export class KvCache {
  length = 0;
  /**
   * each layer's keys and values, head-major [kvHeads, rows, headDim] (AttentionShape.kvCapacity): float32, or
   * float16 bits where the cache is `half`
   */
  readonly k: (Float32Array | Uint16Array)[];
  readonly v: (Float32Array | Uint16Array)[];
  /** the positions each layer's arrays have room for */
  rows = 0;
  /** `half`: a float16 cache's kernels (Decoder.kvCache); without them the cache is float32 */
  constructor(
    readonly cfg: ModelConfig,
    readonly capacity: number,
    readonly half?: HalfKvCache,
  ) {
    this.k = Array.from({ length: cfg.numLayers }, () => this.alloc(0));
    this.v = Array.from({ length: cfg.numLayers }, () => this.alloc(0));
  }

  get dtype(): 'float16' | 'float32' {
    return this.half ? 'float16' : 'float32';
  }

  private alloc(n: number): Float32Array | Uint16Array {
    return this.half ? new Uint16Array(n) : new Float32Array(n);
  }

  /** Room for `positions` positions in every layer. */
  reserve(positions: number): void {
    if (positions <= this.rows) return;
    const rows = Math.min(this.capacity, Math.max(positions, Math.ceil((1.25 * this.rows) / 16) * 16, 16));
    const { numKvHeads: heads, headDim: d } = this.cfg;
    for (const kv of [this.k, this.v]) {
      for (let l = 0; l < kv.length; l++) {
        const old = kv[l]!;
        const grown = this.alloc(heads * rows * d);
        for (let h = 0; h < heads; h++) grown.set(old.subarray(h * this.rows * d, (h * this.rows + this.length) * d), h * rows * d);
        kv[l] = grown;
      }
    }
    this.rows = rows;
  }

  /** Layer `layer`'s keys and values of `seq` new positions from `start` ([seq, kvHeads·headDim] each, as projected). */
  write(layer: number, k: Float32Array, v: Float32Array, start: number, seq: number): void {
    const { numKvHeads: heads, headDim: d } = this.cfg;
    for (const [src, dst] of [
      [k, this.k[layer]!],
      [v, this.v[layer]!],
    ] as const) {
      if (this.half) {
        this.half.store(src, dst as Uint16Array, this.rows, start, seq);
        continue;
      }
      for (let t = 0; t < seq; t++)
        for (let h = 0; h < heads; h++)
          dst.set(src.subarray((t * heads + h) * d, (t * heads + h + 1) * d), (h * this.rows + start + t) * d);
    }
  }

  /** Layer `layer`'s keys and values as float32: a float16 cache's widened (a prompt continued over it). */
  float(layer: number): [Float32Array, Float32Array] {
    const widen = (x: Float32Array | Uint16Array): Float32Array => (x instanceof Float32Array ? x : halfArrayToFloat(x));
    return [widen(this.k[layer]!), widen(this.v[layer]!)];
  }
}

/** A KV cache's storage: 'auto' is float16 where the backend has its kernels (Decoder.kvCache), else float32. */
export type KvCacheType = 'auto' | 'float16' | 'float32';

/**
 * A decoder stack on a backend. Blocks are either float weights run through the backend's matmuls (the
 * quantizer streams them one at a time through the block's stages, replacing layers as it goes) or prepared
 * kernels (loadModel, for eval and generation; packed for GPTQ checkpoints).
 */
export class Decoder<B extends BlockWeights | PreparedBlock = BlockWeights | PreparedBlock> {
  readonly rope: Rope | undefined;
  /** Gemma 3's sliding-window layers rotate with their own RoPE */
  readonly localRope: Rope | undefined;
  readonly headDim: number;
  /** BLOOM's per-head ALiBi slopes */
  readonly alibi: Float32Array | undefined;
  /** generation's 16-bit head kernel, once prepareHead() has made it */
  private head16: Head16 | undefined;

  get embed(): Embedding {
    return this.outer.embed;
  }

  /** the LM head [vocab, embedDim]; 16-bit as stored until prepareHead() */
  get head(): StoredRows {
    return this.outer.head;
  }

  constructor(
    readonly cfg: ModelConfig,
    readonly backend: Backend,
    readonly outer: OuterWeights,
    readonly blocks: B[],
  ) {
    this.headDim = cfg.headDim;
    this.rope = cfg.rope && new Rope(cfg.rope);
    this.localRope = cfg.localRope && new Rope(cfg.localRope);
    this.alibi = cfg.alibi ? alibiSlopes(cfg.numHeads) : undefined;
  }

  /** A float checkpoint with its weights as plain arrays (for the quantizer's studies and tests that swap layers). */
  static async load(dir: string, backend: Backend): Promise<Decoder<BlockWeights>> {
    const cfg = readModelConfig(dir);
    const st = new SafetensorsModel(dir);
    try {
      checkTensorNames(st, cfg, (w) => ({ required: [w] }));
      const outer = readOuter(st, cfg);
      return new Decoder(
        cfg,
        backend,
        outer,
        Array.from({ length: cfg.numLayers }, (_, i) => readBlock(st, cfg, i)),
      );
    } finally {
      st.close();
    }
  }

  /**
   * The residual stream's input for windows of `seq` tokens whose first sits at position `start`: embeddings
   * (scaled, projected up where the family does), plus learned position embeddings where it has them.
   */
  async embedTokens(tokens: ArrayLike<number>, seq = tokens.length, start = 0): Promise<Float32Array> {
    const { cfg, outer } = this;
    const E = cfg.embedDim;
    const D = cfg.hiddenSize;
    const scale = cfg.embeddingScale;
    let x: Float32Array = new Float32Array(tokens.length * E);
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (!(t >= 0 && t < cfg.vocabSize)) throw new RangeError(`token id ${t} outside the vocabulary (0..${cfg.vocabSize - 1})`);
      widenRowsInto(this.embed, t, t + 1, E, x, i * E);
    }
    if (scale !== 1) for (let i = 0; i < x.length; i++) x[i]! *= scale;
    if (outer.embedNorm) x = layerNorm(x, outer.embedNorm, outer.embedNormBias, tokens.length, cfg.rmsNormEps);
    if (outer.projectIn) x = await this.backend.matmulNT(x, outer.projectIn, tokens.length, D, E);
    if (outer.positions) {
      const off = cfg.positionOffset ?? 0;
      for (let i = 0; i < tokens.length; i++) {
        const pos = start + (i % seq) + off;
        for (let d = 0; d < D; d++) x[i * D + d]! += outer.positions[pos * D + d]!;
      }
    }
    return x;
  }

  /**
   * One decoder block on hidden states x [batch*seq, D] (updated in place). With a cache, the new positions
   * follow cache.length and their keys/values are appended. The block is its stages in order; the quantizer
   * runs the same stages one at a time (true-sequential calibration).
   */
  async block(w: BlockWeights | PreparedBlock, layer: number, x: Float32Array, batch: number, seq: number, cache?: KvCache): Promise<void> {
    const rows = batch * seq;
    const att = await this.attention(w, layer, await this.attentionInput(w, x, rows), batch, seq, cache);
    if ('tail' in w && w.tail) {
      x.set(await w.tail.apply(x, att, rows));
      return;
    }
    if (this.cfg.parallel) {
      // GPT-NeoX, Falcon: the MLP reads the block's input too; both outputs join the stream at the end
      const act = await this.mlpActivation(w, await this.mlpInput(w, x, rows), rows);
      await this.addProjection(w, 'o', x, att, rows);
      await this.addProjection(w, 'down', x, act, rows);
      return;
    }
    await this.addProjection(w, 'o', x, att, rows);
    const act = await this.mlpActivation(w, await this.mlpInput(w, x, rows), rows);
    await this.addProjection(w, 'down', x, act, rows);
  }

  private norm(w: BlockCommon, name: string, x: Float32Array, rows: number): Promise<Float32Array> {
    return this.normWith(w.norms[name]!, w.normBias[name], x, rows);
  }

  /** RMSNorm, or LayerNorm (with its bias) where the family uses it */
  private normWith(weight: Float32Array, bias: Float32Array | undefined, x: Float32Array, rows: number): Promise<Float32Array> {
    if (this.cfg.normKind === 'layer') return Promise.resolve(layerNorm(x, weight, bias, rows, this.cfg.rmsNormEps));
    return this.backend.rmsNorm(x, weight, rows, this.cfg.rmsNormEps);
  }

  /** The input of q/k/v: RMSNorm(x), or x itself where there is no norm before attention (OLMo2). */
  attentionInput(w: BlockWeights | PreparedBlock, x: Float32Array, rows: number): Promise<Float32Array> {
    const n = this.cfg.norms.attnIn;
    return n ? this.norm(w, n, x, rows) : Promise.resolve(x);
  }

  /** The input of gate/up: RMSNorm(x) after the attention residual, or x itself where there is no norm before the MLP. */
  mlpInput(w: BlockWeights | PreparedBlock, x: Float32Array, rows: number): Promise<Float32Array> {
    const n = this.cfg.norms.mlpIn;
    return n ? this.norm(w, n, x, rows) : Promise.resolve(x);
  }

  /** o_proj's input: q/k/v of h, normed and rotated, attended over the sequence (and the cache's past positions). */
  async attention(
    w: BlockWeights | PreparedBlock,
    layer: number,
    h: Float32Array,
    batch: number,
    seq: number,
    cache?: KvCache,
  ): Promise<Float32Array> {
    const { cfg } = this;
    const H = cfg.numHeads;
    const KVH = cfg.numKvHeads;
    const hd = this.headDim;
    const rows = batch * seq;
    const kvWidth = KVH * hd;
    const start = cache?.length ?? 0;
    let [q, k, v] = (await this.project(w, 0, 'qkv', h, rows, [H * hd, kvWidth, kvWidth])) as [Float32Array, Float32Array, Float32Array];
    if (cfg.fusedQkv === 'none') {
      // (a fused layer's bias went in before the split)
      const L = cfg.linear;
      q = addBias(q, w.bias[L.q]);
      k = addBias(k, w.bias[L.k]);
      v = addBias(v, w.bias[L.v]);
    }
    if (cfg.qkNorm !== 'none') {
      // per head: each head's hd values are one row; full: the whole projection is one row
      const perHead = cfg.qkNorm === 'head';
      q = await this.norm(w, 'self_attn.q_norm', q, perHead ? rows * H : rows);
      k = await this.norm(w, 'self_attn.k_norm', k, perHead ? rows * KVH : rows);
    }
    const window = cfg.slidingWindow(layer);
    const rope = (window && this.localRope) || this.rope;
    rope?.apply(q, batch, seq, H, hd, start);
    rope?.apply(k, batch, seq, KVH, hd, start);
    // the backend scales scores by 1/sqrt(hd); a family's own scale is folded into q
    const qScale = cfg.attentionScale * Math.sqrt(hd);
    if (qScale !== 1) for (let i = 0; i < q.length; i++) q[i]! *= qScale;
    let keys = k;
    let values = v;
    let ctx = seq;
    let kvCapacity: number | undefined;
    if (cache) {
      if (batch !== 1) throw new Error('the KV cache holds one sequence');
      cache.write(layer, k, v, start, seq);
      ctx = start + seq;
      // a prompt on an empty cache sees only its own keys, as projected; later steps read the cache's
      if (start > 0) kvCapacity = cache.rows;
    }
    const shape: AttentionShape = {
      batch,
      seq,
      ctx,
      ...this.kvShape(),
      ...(window ? { window } : {}),
      ...(kvCapacity ? { kvCapacity } : {}),
    };
    if (cache && kvCapacity) {
      if (cache.half && seq === 1) return cache.half.attend(q, cache.k[layer] as Uint16Array, cache.v[layer] as Uint16Array, shape);
      [keys, values] = cache.float(layer);
    }
    return this.attentionChunked(q, keys, values, shape);
  }

  private kvShape(): KvShape {
    const { cfg } = this;
    return {
      heads: cfg.numHeads,
      kvHeads: cfg.numKvHeads,
      headDim: this.headDim,
      ...(cfg.attnSoftcap ? { softcap: cfg.attnSoftcap } : {}),
      ...(this.alibi ? { alibi: this.alibi } : {}),
    };
  }

  /**
   * A KV cache for one sequence of up to `capacity` positions (generation). 'auto' stores it in float16 where the
   * backend has the kernels for this model's attention (ortBackend with the native kernels built), as llama.cpp
   * does by default; float32 otherwise, or when asked.
   */
  kvCache(capacity: number, type: KvCacheType = 'auto'): KvCache {
    const half = type === 'float32' ? undefined : this.backend.halfKvCache?.(this.kvShape());
    if (type === 'float16' && !half)
      fail(
        `a float16 KV cache needs the native kernels (npm run build) and attention they serve (no soft-capping or ALiBi, a head size a multiple of 8); the ${this.backend.name} backend has none for this model`,
      );
    return new KvCache(this.cfg, capacity, half);
  }

  /** down_proj's input: act(gate·h2) ⊙ up·h2. */
  async mlpActivation(w: BlockWeights | PreparedBlock, h2: Float32Array, rows: number): Promise<Float32Array> {
    const { cfg } = this;
    const L = cfg.linear;
    const hidden = cfg.intermediateSize;
    if (cfg.mlp === 'plain') {
      const [up] = await this.project(w, 2, 'gateUp', h2, rows, [hidden]);
      return activate(cfg.activation, addBias(up!, w.bias[L.up]));
    }
    // a stacked kernel that forms the activation itself (load.ts: silu, no biases)
    if ('qkv' in w && w.gateUp!.length === 1 && w.gateUp![0]!.gated === 'silu') return w.gateUp![0]!.apply(h2, rows);
    const swiglu = cfg.activation === 'silu' && !cfg.fusedGateUp && !w.bias[L.gate!] && !w.bias[L.up];
    if (!('qkv' in w) && swiglu) return this.backend.swiglu(h2, w.linear[L.gate!]!, w.linear[L.up]!, rows, hidden, cfg.hiddenSize);
    const [gate, up] = (await this.project(w, 2, 'gateUp', h2, rows, [hidden, hidden])) as [Float32Array, Float32Array];
    return gatedActivation(cfg.activation, addBias(gate, w.bias[L.gate!]), addBias(up, w.bias[L.up]));
  }

  /**
   * The residual update x += W·input (+ bias) of o_proj or down_proj, its output normed first where the family
   * norms it, and the stream normed after the add where the family norms the residual (OPT's post-norm).
   */
  async addProjection(
    w: BlockWeights | PreparedBlock,
    role: 'o' | 'down',
    x: Float32Array,
    input: Float32Array,
    rows: number,
  ): Promise<void> {
    const { cfg } = this;
    const name = cfg.linear[role];
    const out = role === 'o' ? cfg.norms.attnOut : cfg.norms.mlpOut;
    const s = cfg.residualScale;
    if (!('qkv' in w) && !w.bias[name] && !out && s === 1) {
      // the plain residual update in the product's epilogue (ortBackend's gemmGraph with an addend)
      x.set(await this.floatLinear(w, name, input, rows, x));
    } else {
      let y = 'qkv' in w ? await w[role]!.apply(input, rows) : await this.floatLinear(w, name, input, rows);
      y = addBias(y, w.bias[name]);
      if (out) y = await this.norm(w, out, y, rows);
      if (s === 1) for (let i = 0; i < x.length; i++) x[i]! += y[i]!;
      else for (let i = 0; i < x.length; i++) x[i]! += s * y[i]!;
    }
    const post = role === 'o' ? cfg.norms.attnResidual : cfg.norms.mlpResidual;
    if (post) x.set(await this.norm(w, post, x, rows));
  }

  private floatLinear(w: BlockWeights, name: LinearName, input: Float32Array, rows: number, addend?: Float32Array): Promise<Float32Array> {
    const [out, inp] = linearShape(this.cfg, name);
    return this.backend.matmulNT(input, w.linear[name]!, rows, out, inp, addend);
  }

  /** The outputs of linear group g (q/k/v or gate/up) on input h, one per part of `widths` however they are stored. */
  private async project(
    w: BlockWeights | PreparedBlock,
    g: number,
    prepared: 'qkv' | 'gateUp',
    h: Float32Array,
    rows: number,
    widths: number[],
  ): Promise<Float32Array[]> {
    const names = linearGroups(this.cfg)[g]!;
    const outputs =
      'qkv' in w
        ? await Promise.all(w[prepared]!.map((k) => k.apply(h, rows)))
        : await Promise.all(names.map((name) => this.floatLinear(w, name, h, rows)));
    if (names.length === 1 && widths.length > 1) {
      // one fused layer: its bias, then its columns apart
      addBias(outputs[0]!, w.bias[names[0]!]);
      const { fusedQkv, numHeads, numKvHeads } = this.cfg;
      if (g === 0 && fusedQkv === 'per-head') return splitGrouped(outputs[0]!, rows, numHeads, numHeads, this.headDim);
      if (g === 0 && fusedQkv === 'grouped') return splitGrouped(outputs[0]!, rows, numHeads, numKvHeads, this.headDim);
    }
    return splitParts(outputs, rows, widths);
  }

  /** Attention over at most ATTENTION_CHUNK sequences at a time, bounding the [batch, heads, seq, ctx] scores. */
  private async attentionChunked(q: Float32Array, k: Float32Array, v: Float32Array, s: AttentionShape): Promise<Float32Array> {
    if (s.batch <= ATTENTION_CHUNK) return this.backend.attention(q, k, v, s);
    const out = new Float32Array(q.length);
    const qPer = s.seq * s.heads * s.headDim;
    const kvPer = s.ctx * s.kvHeads * s.headDim;
    for (let b0 = 0; b0 < s.batch; b0 += ATTENTION_CHUNK) {
      const b = Math.min(ATTENTION_CHUNK, s.batch - b0);
      const sub = (x: Float32Array, per: number): Float32Array => x.subarray(b0 * per, (b0 + b) * per);
      out.set(await this.backend.attention(sub(q, qPer), sub(k, kvPer), sub(v, kvPer), { ...s, batch: b }), b0 * qPer);
    }
    return out;
  }

  /**
   * Final hidden states (after the last norm, and OPT-350m's projection down) for token windows [batch, seq],
   * [batch*seq, embedDim]; a family's logit divisor is folded in, so head · h is the logits.
   */
  async hidden(tokens: ArrayLike<number>, batch: number, seq: number, cache?: KvCache): Promise<Float32Array> {
    // a streamed model holds none of its blocks (streamedHidden runs them): embeddings alone are not its output
    if (this.blocks.length !== this.cfg.numLayers)
      throw new Error(
        `this model holds ${this.blocks.length} of its ${this.cfg.numLayers} blocks: its blocks are streamed (streamedHidden)`,
      );
    if (cache && cache.length + seq > cache.capacity) {
      throw new RangeError(`context full: ${cache.length + seq} positions exceed ${cache.capacity}`);
    }
    cache?.reserve(cache.length + seq);
    const x = await this.embedTokens(tokens, seq, cache?.length ?? 0);
    for (let l = 0; l < this.blocks.length; l++) await this.block(this.blocks[l]!, l, x, batch, seq, cache);
    if (cache) cache.length += seq;
    return this.final(x, batch * seq);
  }

  /**
   * The last block's output [windows*seq, hidden] for `windows` token windows of `seq`, a model too large to hold
   * streamed: every window goes through block l, `batch` windows a call, before block l+1 is prepared, and each
   * block's kernels are disposed once used. Memory holds one block and every window's hidden states (as eval's
   * reference states do); the arithmetic is hidden()'s, in another order. `final` makes the head's input of it.
   */
  async streamedHidden(
    prepare: (layer: number) => Promise<PreparedBlock>,
    tokens: Int32Array,
    windows: number,
    seq: number,
    batch: number,
    onBlock?: (done: number, total: number) => void,
  ): Promise<Float32Array> {
    const D = this.cfg.hiddenSize;
    const x = new Float32Array(windows * seq * D);
    const rows = (w0: number, b: number): [number, number] => [w0 * seq, (w0 + b) * seq];
    const eachBatch = async (fn: (w0: number, b: number) => Promise<void>): Promise<void> => {
      for (let w0 = 0; w0 < windows; w0 += batch) await fn(w0, Math.min(batch, windows - w0));
    };
    await eachBatch(async (w0, b) => x.set(await this.embedTokens(tokens.subarray(...rows(w0, b)), seq), w0 * seq * D));
    for (let l = 0; l < this.cfg.numLayers; l++) {
      const block = await prepare(l);
      try {
        await eachBatch(async (w0, b) => {
          const [r0, r1] = rows(w0, b);
          // a copy, not a view: the engine is handed whole arrays everywhere else
          const xb = x.slice(r0 * D, r1 * D);
          await this.block(block, l, xb, b, seq);
          x.set(xb, r0 * D);
        });
      } finally {
        await disposeBlock(block);
      }
      onBlock?.(l + 1, this.cfg.numLayers);
    }
    return x;
  }

  /**
   * The head's input for rows of the last block's output [rows, hidden]: the final norm, OPT-350m's projection
   * down, and a family's logit divisor folded in. `x` may be overwritten.
   */
  async final(x: Float32Array, rows: number): Promise<Float32Array> {
    const { finalNorm, finalNormBias, projectOut } = this.outer;
    let h = finalNorm ? await this.normWith(finalNorm, finalNormBias, x, rows) : x;
    if (projectOut) h = await this.backend.matmulNT(h, projectOut, rows, this.cfg.embedDim, this.cfg.hiddenSize);
    const d = this.cfg.logitsDivisor;
    if (d !== 1) for (let i = 0; i < h.length; i++) h[i]! /= d;
    return h;
  }

  /**
   * Generation's head: a 16-bit one moves into the 16-bit matvec kernel's memory as stored (tensor/head16.ts; a
   * tied embedding is the same table and moves with it), else, where that kernel cannot take it, it is widened
   * once to float32. Eval never calls this: its statistics widen one vocabulary slice at a time
   * (Backend.headStats).
   */
  prepareHead(): void {
    const { outer, cfg } = this;
    if (outer.head.dtype === 'F32' || this.head16) return;
    const tied = outer.embed === outer.head;
    if (head16Fits(outer.head, cfg.vocabSize, cfg.embedDim)) {
      this.head16 = openHead16(outer.head, cfg.vocabSize, cfg.embedDim);
      outer.head = this.head16.table;
    } else {
      outer.head = floatRows(rowsF32(outer.head, 0, cfg.vocabSize, cfg.embedDim));
    }
    if (tied) outer.embed = outer.head;
  }

  /**
   * Logits [rows, vocab] for final hidden states (the head prepared on first use), soft-capped where the family caps
   * them: a quantized head's kernel; else one row on the 16-bit kernel where the head has one, else a vocabulary
   * slice at a time on the backend.
   */
  async logits(h: Float32Array, rows: number): Promise<Float32Array> {
    const { vocabSize, embedDim } = this.cfg;
    const kernel = this.outer.headKernel;
    if (kernel) return softcap(await kernel.apply(h, rows), this.cfg.finalSoftcap);
    this.prepareHead();
    const z = rows === 1 && this.head16 ? this.head16.logits(h) : await headLogits(this.backend, h, this.head, rows, embedDim, vocabSize);
    return softcap(z, this.cfg.finalSoftcap);
  }
}
