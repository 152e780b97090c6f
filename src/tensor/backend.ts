/**
 * The numeric kernels every stage uses. `ref.ts` is the plain-TypeScript definition of each (tests compare
 * against it); `ort.ts` runs the same kernels on onnxruntime's multi-threaded CPU engine.
 * All matrices are dense row-major float32.
 */

import type { StoredRows } from './rows.js';

export interface AttentionShape {
  batch: number;
  /** new query positions per sequence */
  seq: number;
  /** key/value positions per sequence (cache + new); query t sits at position ctx - seq + t */
  ctx: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** sliding window: a query sees at most this many positions, its own included (default: all before it) */
  window?: number;
  /** Gemma 2: scores become cap·tanh(score/cap) before the softmax */
  softcap?: number;
  /** ALiBi (BLOOM): head h adds alibi[h]·j to its score for key position j */
  alibi?: Float32Array;
  /**
   * k and v are a KV cache's own arrays, head-major [kvHeads, kvCapacity, headDim] (batch 1), positions 0..ctx-1
   * filled; without it they are position-major [batch, ctx, kvHeads, headDim]. Head-major lets a decode step's
   * products read each head's keys as one matrix: position-major needed a transpose of the whole cache per layer
   * per token (one call at Llama-2-7B's 32 heads of 128 over 1024 positions: 5.9-6.0 ms against 1.8-2.2, bench:kernels).
   */
  kvCapacity?: number;
}

/** What a KV cache's storage depends on: the model's attention, apart from the positions of one call. */
export type KvShape = Pick<AttentionShape, 'heads' | 'kvHeads' | 'headDim' | 'softcap' | 'alibi'>;

/**
 * A float16 KV cache's kernels (head-major [kvHeads, capacity, headDim] per layer, float16 bits): a decode step
 * reads every cached key and value, so at long contexts their bytes are its time, and float16 halves them.
 */
export interface HalfKvCache {
  /** new keys or values [seq, kvHeads·headDim], as projected, into `dst` at positions start..start+seq-1 */
  store(src: Float32Array, dst: Uint16Array, capacity: number, start: number, seq: number): void;
  /** one new position's attention (seq 1, batch 1, sh.kvCapacity the cache's rows) */
  attend(q: Float32Array, k: Uint16Array, v: Uint16Array, sh: AttentionShape): Float32Array;
}

/** Where key/value position j of kv head h (sequence b) starts in k and v, in either layout (AttentionShape). */
export function kvOffset(s: AttentionShape, b: number, j: number, h: number): number {
  return s.kvCapacity ? (h * s.kvCapacity + j) * s.headDim : ((b * s.ctx + j) * s.kvHeads + h) * s.headDim;
}

/** The gated MLP's activation: act(gate·x) ⊙ up·x. gelu is erf's; gelu_tanh its tanh approximation. */
export type Activation = 'silu' | 'gelu' | 'gelu_tanh' | 'relu';

export interface HeadStatsOptions {
  ref?: { h: Float32Array; w: StoredRows };
  /** bound on the floats one vocabulary slice widens or outputs (default SLICE_FLOATS) */
  sliceFloats?: number;
}

export interface HeadStats {
  /** -log p(target) per row */
  nll: Float32Array;
  /** KL(ref || this) per row, when a reference was given */
  kl?: Float32Array;
  /** 1 where argmax equals the reference's argmax */
  agree?: Uint8Array;
}

/**
 * A GPTQ-packed linear layer [rows=out, cols=in] in the checkpoint's own int32 layout (see formats/gptq-pack.ts),
 * with gptq_v2 zero points (the stored value is the zero point) and scales widened to float32.
 * Weight (r, c) = scales[g, r] · (code(c, r) − zero(g, r)) with g = gIdx[c].
 */
export interface PackedLinearWeights {
  rows: number;
  cols: number;
  bits: number;
  /** int32 [cols·bits/32, rows] */
  qweight: Int32Array;
  /** int32 [groups, rows·bits/32] */
  qzeros: Int32Array;
  /** [groups, rows] */
  scales: Float32Array;
  /** [cols] */
  gIdx: Int32Array;
}

/**
 * How a packed kernel treats its input: 'fp32' multiplies in float32 (equal to dequantize-then-matmul up to
 * float32 rounding); 'int8' quantizes each row's activations to int8 per block first and multiplies in
 * integers, as llama.cpp's Q4_0·Q8_0 dot does (faster, small extra error).
 */
export type ActivationPrecision = 'fp32' | 'int8';

/**
 * What a prepared layer outputs: its product y, or with `gated`, for a stacked [gate; up] layer, the gated MLP's
 * activation silu(y[:, :rows/2]) ⊙ y[:, rows/2:] ([m, rows/2]) formed inside the kernel (in JavaScript the
 * elementwise silu cost 2.9 ms of a TinyLlama token's ~39).
 */
export interface LinearOptions {
  gated?: 'silu';
}

/** A linear layer prepared once and applied many times: y[m, rows] = x[m, cols] · Wᵀ (or its gated activation). */
export interface LinearKernel {
  readonly rows: number;
  readonly cols: number;
  /** set when apply() returns the gated activation [m, rows/2] (LinearOptions) */
  readonly gated?: 'silu';
  /** bytes of weights (and their scales/zero points) the kernel keeps and reads on each call */
  readonly weightBytes: number;
  apply(x: Float32Array, m: number): Promise<Float32Array>;
  /** free the engine's copy of the weights */
  dispose(): Promise<void>;
}

/**
 * The rest of a plain pre-norm block after attention (no biases, no extra norms, RMSNorm, silu-gated MLP), as
 * one kernel: x₁ = x + att·Woᵀ, then x₁ + (silu(n·Wgᵀ) ⊙ n·Wuᵀ)·Wdᵀ with n = RMSNorm(x₁)·norm. In generation
 * these four steps were three engine calls and JavaScript between them for each block.
 */
export interface ResidualMlpKernel {
  readonly weightBytes: number;
  /** the block's output for its input x [m, hidden] and attention output att [m, o_proj's input] */
  apply(x: Float32Array, att: Float32Array, m: number): Promise<Float32Array>;
  dispose(): Promise<void>;
}

/** The packed layers and norm a ResidualMlpKernel is made from: gateUp stacks gate's rows over up's. */
export interface ResidualMlpWeights {
  o: PackedLinearWeights;
  gateUp: PackedLinearWeights;
  down: PackedLinearWeights;
  norm: Float32Array;
  eps: number;
}

/** matmul64's optional layout of A and destination of C */
export interface Gemm64Options {
  transA?: boolean;
  out?: Float64Array;
}

export interface Backend {
  readonly name: string;
  /** Prepare float weights W [rows, cols] for repeated use (the engine may keep them in its own layout). */
  floatLinear(w: Float32Array, rows: number, cols: number, opts?: LinearOptions): Promise<LinearKernel>;
  /** Prepare a GPTQ-packed layer; the float matrix is never formed. */
  packedLinear(p: PackedLinearWeights, activations: ActivationPrecision, opts?: LinearOptions): Promise<LinearKernel>;
  /** A block's tail as one kernel (ResidualMlpKernel), or undefined where a layer's layout has no fused form. */
  packedResidualMlp(w: ResidualMlpWeights, activations: ActivationPrecision): Promise<ResidualMlpKernel | undefined>;
  /**
   * C[m,n] = A[m,k] · B[n,k]ᵀ (activations times a Linear weight stored [out, in]); with `addend` [m,n],
   * addend + A·Bᵀ (a residual update, in the product's epilogue), as a new array: `addend` is left as it was.
   */
  matmulNT(a: Float32Array, b: Float32Array, m: number, n: number, k: number, addend?: Float32Array): Promise<Float32Array>;
  /** C[m,n] = A[m,k] · B[k,n] */
  matmulNN(a: Float32Array, b: Float32Array, m: number, n: number, k: number): Promise<Float32Array>;
  /**
   * Float64 C[m,n] = A[m,k]·Bᵀ with B stored [n,k] (transB) or A·B with B stored [k,n]; with `transA`, A is
   * stored [k,m] and its transpose is multiplied. The gemms of the blocked Cholesky GPTQ factors its Hessian
   * with. C is written into `out` when given (m·n values, which may be a view into a larger matrix) and returned.
   */
  matmul64(a: Float64Array, b: Float64Array, m: number, n: number, k: number, transB: boolean, more?: Gemm64Options): Promise<Float64Array>;
  /** RMSNorm of each row: x / sqrt(mean(x²) + eps) · w */
  rmsNorm(x: Float32Array, w: Float32Array, rows: number, eps: number): Promise<Float32Array>;
  /** SwiGLU: silu(H·Wgateᵀ) ⊙ (H·Wupᵀ), H [m,k], W [n,k] → [m,n] */
  swiglu(h: Float32Array, wGate: Float32Array, wUp: Float32Array, m: number, n: number, k: number): Promise<Float32Array>;
  /** G[cols,cols] = X[rows,cols]ᵀ · Y (Y defaults to X: the Gram matrix of a layer's inputs, for GPTQ's Hessian) */
  gram(x: Float32Array, rows: number, cols: number, y?: Float32Array): Promise<Float32Array>;
  /**
   * h ← keep·h + add·XᵀX in float64 on and above the diagonal only (h[i·cols + j], j ≥ i; the entries below are
   * left as they were): GPTQ's running Hessian, whose other half is the mirror image.
   */
  accumulateGram(h: Float64Array, x: Float32Array, rows: number, cols: number, keep: number, add: number): Promise<void>;
  /**
   * Causal softmax attention. q: [batch, seq, heads, headDim]; k, v: [batch, ctx, kvHeads, headDim];
   * returns [batch, seq, heads, headDim]. Scores are scaled by 1/sqrt(headDim).
   */
  attention(q: Float32Array, k: Float32Array, v: Float32Array, s: AttentionShape): Promise<Float32Array>;
  /** A float16 KV cache's kernels for attention of this shape, where the backend has them. */
  halfKvCache?(sh: KvShape): HalfKvCache | undefined;
  /**
   * The LM head and its statistics without materialising the logits: logits = h[m,d] · W[V,d]ᵀ, then
   * log-softmax per row. With `ref` (the reference model's final hidden states and head) also returns
   * the KL divergence from the reference distribution and top-1 agreement. The heads may be 16-bit as stored:
   * they are widened a vocabulary slice at a time (at most `sliceFloats` floats a slice, see rows.ts).
   */
  headStats(
    h: Float32Array,
    w: StoredRows,
    m: number,
    d: number,
    vocab: number,
    targets: Int32Array,
    opts?: HeadStatsOptions,
  ): Promise<HeadStats>;
}
