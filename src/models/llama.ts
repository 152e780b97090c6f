import { parseLlamaConfig, readConfigJson, type LlamaConfig } from '../io/config.js';
import { SafetensorsModel } from '../io/safetensors.js';
import type { AttentionShape, Backend, LinearKernel } from '../tensor/index.js';
import { siluMul } from '../tensor/ref.js';

const ATTENTION_CHUNK = 16;

/** Linear layers of one decoder block, in true-sequential groups: each group's inputs depend on the one before. */
export const LINEAR_GROUPS = [
  ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
  ['self_attn.o_proj'],
  ['mlp.gate_proj', 'mlp.up_proj'],
  ['mlp.down_proj'],
] as const;
export type LinearName = (typeof LINEAR_GROUPS)[number][number];

export interface BlockWeights {
  inputNorm: Float32Array;
  postNorm: Float32Array;
  /** each [out, in] */
  linear: Record<LinearName, Float32Array>;
}

/**
 * A block ready for inference: its linear layers as prepared kernels. Layers that share an input are one
 * stacked kernel when their layouts allow ([q; k; v], [gate; up]), else one kernel each, in that order.
 */
export interface PreparedBlock {
  inputNorm: Float32Array;
  postNorm: Float32Array;
  qkv: LinearKernel[];
  o: LinearKernel;
  gateUp: LinearKernel[];
  down: LinearKernel;
}

/** Outputs of kernels sharing input x [rows, ·], one array per part of `widths` (a stacked kernel's output split by column). */
async function applyShared(kernels: LinearKernel[], x: Float32Array, rows: number, widths: number[]): Promise<Float32Array[]> {
  if (kernels.length === widths.length) return Promise.all(kernels.map((k) => k.apply(x, rows)));
  const y = await kernels[0]!.apply(x, rows);
  const total = widths.reduce((a, b) => a + b, 0);
  let c0 = 0;
  return widths.map((w) => {
    const part = new Float32Array(rows * w);
    for (let r = 0; r < rows; r++) part.set(y.subarray(r * total + c0, r * total + c0 + w), r * w);
    c0 += w;
    return part;
  });
}

/** [out, in] shape of each linear layer */
export function linearShape(cfg: LlamaConfig, name: LinearName): [number, number] {
  const D = cfg.hiddenSize;
  const kv = (cfg.hiddenSize / cfg.numHeads) * cfg.numKvHeads;
  switch (name) {
    case 'self_attn.q_proj':
    case 'self_attn.o_proj':
      return [D, D];
    case 'self_attn.k_proj':
    case 'self_attn.v_proj':
      return [kv, D];
    case 'mlp.gate_proj':
    case 'mlp.up_proj':
      return [cfg.intermediateSize, D];
    case 'mlp.down_proj':
      return [D, cfg.intermediateSize];
  }
}

/** One block's float weights (the quantizer's input; inference loads prepared kernels, see load.ts). */
export function readBlock(st: SafetensorsModel, cfg: LlamaConfig, i: number): BlockWeights {
  const p = `model.layers.${i}.`;
  const linear = {} as Record<LinearName, Float32Array>;
  for (const group of LINEAR_GROUPS) for (const name of group) linear[name] = st.readFloat(`${p}${name}.weight`, linearShape(cfg, name));
  return {
    inputNorm: st.readFloat(`${p}input_layernorm.weight`, [cfg.hiddenSize]),
    postNorm: st.readFloat(`${p}post_attention_layernorm.weight`, [cfg.hiddenSize]),
    linear,
  };
}

/** Keys and values of past positions for incremental decoding, per layer [batch, ctx, kvHeads*headDim]. */
export class KvCache {
  length = 0;
  readonly k: Float32Array[];
  readonly v: Float32Array[];
  constructor(
    readonly cfg: LlamaConfig,
    readonly capacity: number,
  ) {
    const width = (cfg.hiddenSize / cfg.numHeads) * cfg.numKvHeads;
    this.k = Array.from({ length: cfg.numLayers }, () => new Float32Array(capacity * width));
    this.v = Array.from({ length: cfg.numLayers }, () => new Float32Array(capacity * width));
  }
}

/** cos/sin tables [position, headDim/2] in float32, as Hugging Face's LlamaRotaryEmbedding computes them */
export class Rope {
  readonly cos: Float32Array;
  readonly sin: Float32Array;
  readonly half: number;
  constructor(headDim: number, maxPos: number, theta: number) {
    this.half = headDim / 2;
    this.cos = new Float32Array(maxPos * this.half);
    this.sin = new Float32Array(maxPos * this.half);
    for (let i = 0; i < this.half; i++) {
      const invFreq = Math.fround(1 / Math.fround(theta ** Math.fround((2 * i) / headDim)));
      for (let p = 0; p < maxPos; p++) {
        const a = Math.fround(p * invFreq);
        this.cos[p * this.half + i] = Math.cos(a);
        this.sin[p * this.half + i] = Math.sin(a);
      }
    }
  }

  /** rotate-half RoPE in place; x: [batch, seq, heads, headDim], query t of every sequence at position start + t */
  apply(x: Float32Array, batch: number, seq: number, heads: number, start: number): void {
    const half = this.half;
    const hd = 2 * half;
    for (let b = 0; b < batch; b++) {
      for (let t = 0; t < seq; t++) {
        const po = (start + t) * half;
        for (let h = 0; h < heads; h++) {
          const o = ((b * seq + t) * heads + h) * hd;
          for (let i = 0; i < half; i++) {
            const c = this.cos[po + i]!;
            const s = this.sin[po + i]!;
            const x1 = x[o + i]!;
            const x2 = x[o + half + i]!;
            x[o + i] = x1 * c - x2 * s;
            x[o + half + i] = x2 * c + x1 * s;
          }
        }
      }
    }
  }
}

/**
 * A Llama decoder stack on a backend. Blocks are either float weights run through the backend's matmuls (the
 * quantizer streams them one at a time through the block's stages, replacing layers as it goes) or prepared
 * kernels (loadModel, for eval and generation; packed for GPTQ checkpoints).
 */
export class Llama<B extends BlockWeights | PreparedBlock = BlockWeights | PreparedBlock> {
  readonly rope: Rope;
  readonly headDim: number;

  constructor(
    readonly cfg: LlamaConfig,
    readonly backend: Backend,
    readonly embed: Float32Array,
    readonly blocks: B[],
    readonly finalNorm: Float32Array,
    readonly head: Float32Array,
  ) {
    this.headDim = cfg.hiddenSize / cfg.numHeads;
    this.rope = new Rope(this.headDim, cfg.maxPositions, cfg.ropeTheta);
  }

  /** A float checkpoint with its weights as plain arrays (for the quantizer's studies and tests that swap layers). */
  static async load(dir: string, backend: Backend): Promise<Llama<BlockWeights>> {
    const cfg = parseLlamaConfig(readConfigJson(dir), `${dir}/config.json`);
    const st = new SafetensorsModel(dir);
    try {
      const embed = st.readFloat('model.embed_tokens.weight', [cfg.vocabSize, cfg.hiddenSize]);
      const blocks = Array.from({ length: cfg.numLayers }, (_, i) => readBlock(st, cfg, i));
      const finalNorm = st.readFloat('model.norm.weight', [cfg.hiddenSize]);
      const head =
        st.has('lm_head.weight') && !cfg.tieWordEmbeddings ? st.readFloat('lm_head.weight', [cfg.vocabSize, cfg.hiddenSize]) : embed;
      return new Llama(cfg, backend, embed, blocks, finalNorm, head);
    } finally {
      st.close();
    }
  }

  embedTokens(tokens: ArrayLike<number>): Float32Array {
    const D = this.cfg.hiddenSize;
    const x = new Float32Array(tokens.length * D);
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (!(t >= 0 && t < this.cfg.vocabSize)) throw new RangeError(`token id ${t} outside the vocabulary (0..${this.cfg.vocabSize - 1})`);
      x.set(this.embed.subarray(t * D, (t + 1) * D), i * D);
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
    await this.addProjection(w, 'self_attn.o_proj', x, att, rows);
    const act = await this.mlpActivation(w, await this.mlpInput(w, x, rows), rows);
    await this.addProjection(w, 'mlp.down_proj', x, act, rows);
  }

  /** The input of q/k/v: RMSNorm(x). */
  attentionInput(w: BlockWeights | PreparedBlock, x: Float32Array, rows: number): Promise<Float32Array> {
    return this.backend.rmsNorm(x, w.inputNorm, rows, this.cfg.rmsNormEps);
  }

  /** The input of gate/up: RMSNorm(x) after the attention residual. */
  mlpInput(w: BlockWeights | PreparedBlock, x: Float32Array, rows: number): Promise<Float32Array> {
    return this.backend.rmsNorm(x, w.postNorm, rows, this.cfg.rmsNormEps);
  }

  /** o_proj's input: q/k/v of h, rotated, attended over the sequence (and the cache's past positions). */
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
    const [q, k, v] = (
      'qkv' in w
        ? await applyShared(w.qkv, h, rows, [cfg.hiddenSize, kvWidth, kvWidth])
        : await Promise.all(LINEAR_GROUPS[0].map((name) => this.floatLinear(w, name, h, rows)))
    ) as [Float32Array, Float32Array, Float32Array];
    this.rope.apply(q, batch, seq, H, start);
    this.rope.apply(k, batch, seq, KVH, start);
    let keys = k;
    let values = v;
    let ctx = seq;
    if (cache) {
      if (batch !== 1) throw new Error('the KV cache holds one sequence');
      cache.k[layer]!.set(k, start * kvWidth);
      cache.v[layer]!.set(v, start * kvWidth);
      ctx = start + seq;
      keys = cache.k[layer]!.subarray(0, ctx * kvWidth);
      values = cache.v[layer]!.subarray(0, ctx * kvWidth);
    }
    return this.attentionChunked(q, keys, values, { batch, seq, ctx, heads: H, kvHeads: KVH, headDim: hd });
  }

  /** down_proj's input: SiLU(gate·h2) ⊙ up·h2. */
  async mlpActivation(w: BlockWeights | PreparedBlock, h2: Float32Array, rows: number): Promise<Float32Array> {
    const { cfg } = this;
    const [hidden] = linearShape(cfg, 'mlp.gate_proj');
    if ('gateUp' in w) return siluMul(...((await applyShared(w.gateUp, h2, rows, [hidden, hidden])) as [Float32Array, Float32Array]));
    return this.backend.swiglu(h2, w.linear['mlp.gate_proj'], w.linear['mlp.up_proj'], rows, hidden, cfg.hiddenSize);
  }

  /** The residual update x += W·input of o_proj or down_proj. */
  async addProjection(
    w: BlockWeights | PreparedBlock,
    name: 'self_attn.o_proj' | 'mlp.down_proj',
    x: Float32Array,
    input: Float32Array,
    rows: number,
  ): Promise<void> {
    const y =
      'qkv' in w ? await (name === 'self_attn.o_proj' ? w.o : w.down).apply(input, rows) : await this.floatLinear(w, name, input, rows);
    for (let i = 0; i < x.length; i++) x[i]! += y[i]!;
  }

  private floatLinear(w: BlockWeights, name: LinearName, input: Float32Array, rows: number): Promise<Float32Array> {
    const [out, inp] = linearShape(this.cfg, name);
    return this.backend.matmulNT(input, w.linear[name], rows, out, inp);
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

  /** Final hidden states (after the last norm) for token windows [batch, seq]. */
  async hidden(tokens: ArrayLike<number>, batch: number, seq: number, cache?: KvCache): Promise<Float32Array> {
    if (cache && cache.length + seq > cache.capacity) {
      throw new RangeError(`context full: ${cache.length + seq} positions exceed ${cache.capacity}`);
    }
    const x = this.embedTokens(tokens);
    for (let l = 0; l < this.blocks.length; l++) await this.block(this.blocks[l]!, l, x, batch, seq, cache);
    if (cache) cache.length += seq;
    return this.backend.rmsNorm(x, this.finalNorm, batch * seq, this.cfg.rmsNormEps);
  }

  private headKernel?: Promise<LinearKernel>;

  /** Prepare the head kernel now (a load step) rather than on the first call to logits(). */
  prepareHead(): Promise<LinearKernel> {
    return (this.headKernel ??= this.backend.floatLinear(this.head, this.cfg.vocabSize, this.cfg.hiddenSize));
  }

  /** Logits [rows, vocab] for final hidden states (the head is prepared as a kernel on first use). */
  async logits(h: Float32Array, rows: number): Promise<Float32Array> {
    return (await this.prepareHead()).apply(h, rows);
  }
}
