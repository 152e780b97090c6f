import { streamValue } from './bit-stream.js';
import {
  kvOffset,
  type ActivationPrecision,
  type Activation,
  type AttentionShape,
  type Backend,
  type HeadStats,
  type HeadStatsOptions,
  type LinearKernel,
  type LinearOptions,
  type PackedLinearWeights,
  type ResidualMlpKernel,
  type ResidualMlpWeights,
} from './backend.js';
import { rowsF32, type StoredRows } from './rows.js';

/** Plain TypeScript definitions of the kernels: the reference the fast backends are tested against. */

export function matmulNT<T extends Float32Array | Float64Array>(a: T, b: T, m: number, n: number, k: number): T {
  const c = (a instanceof Float64Array ? new Float64Array(m * n) : new Float32Array(m * n)) as T;
  for (let i = 0; i < m; i++) {
    const ai = i * k;
    for (let j = 0; j < n; j++) {
      const bj = j * k;
      let s = 0;
      for (let p = 0; p < k; p++) s += a[ai + p]! * b[bj + p]!;
      c[i * n + j] = s;
    }
  }
  return c;
}

export function rmsNorm(x: Float32Array, w: Float32Array, rows: number, eps: number): Float32Array {
  const D = w.length;
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) {
    const o = r * D;
    let ss = 0;
    for (let j = 0; j < D; j++) ss += x[o + j]! * x[o + j]!;
    const inv = 1 / Math.sqrt(ss / D + eps);
    for (let j = 0; j < D; j++) out[o + j] = x[o + j]! * inv * w[j]!;
  }
  return out;
}

export function transpose<T extends Float32Array | Float64Array>(a: T, rows: number, cols: number): T {
  const t = a.slice() as T;
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j]!;
  return t;
}

/** silu(g) ⊙ u, in place in g */
export function siluMul(g: Float32Array, u: Float32Array): Float32Array {
  for (let i = 0; i < g.length; i++) g[i] = (g[i]! / (1 + Math.exp(-g[i]!))) * u[i]!;
  return g;
}

/** erf from Numerical Recipes' Chebyshev fit of erfc (fractional error < 1.2e-7: float32 accuracy for GELU) */
function erf(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r =
    t *
    Math.exp(
      -z * z -
        1.26551223 +
        t *
          (1.00002368 +
            t *
              (0.37409196 +
                t *
                  (0.09678418 +
                    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    );
  return x >= 0 ? 1 - r : r - 1;
}

const ACTIVATION_FNS: Record<Activation, (x: number) => number> = {
  silu: (x) => x / (1 + Math.exp(-x)),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  gelu_tanh: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
  relu: (x) => (x > 0 ? x : 0),
};

/** act(x) in place: the plain MLP's activation (OPT's fc1) */
export function activate(act: Activation, x: Float32Array): Float32Array {
  const f = ACTIVATION_FNS[act];
  for (let i = 0; i < x.length; i++) x[i] = f(x[i]!);
  return x;
}

/** LayerNorm of each row, (x − mean)/sqrt(var + eps)·w + b, statistics in float64 */
export function layerNorm(x: Float32Array, w: Float32Array, b: Float32Array | undefined, rows: number, eps: number): Float32Array {
  const n = w.length;
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) {
    const o = r * n;
    let mean = 0;
    for (let i = 0; i < n; i++) mean += x[o + i]!;
    mean /= n;
    let v = 0;
    for (let i = 0; i < n; i++) v += (x[o + i]! - mean) ** 2;
    const inv = 1 / Math.sqrt(v / n + eps);
    for (let i = 0; i < n; i++) out[o + i] = (x[o + i]! - mean) * inv * w[i]! + (b ? b[i]! : 0);
  }
  return out;
}

/** act(g) ⊙ u, in place in g: the gated MLP of the Llama-layout families */
export function gatedActivation(act: Activation, g: Float32Array, u: Float32Array): Float32Array {
  if (act === 'silu') return siluMul(g, u);
  const f = ACTIVATION_FNS[act];
  for (let i = 0; i < g.length; i++) g[i] = f(g[i]!) * u[i]!;
  return g;
}

export function swiglu(h: Float32Array, wGate: Float32Array, wUp: Float32Array, m: number, n: number, k: number): Float32Array {
  return siluMul(matmulNT(h, wGate, m, n, k), matmulNT(h, wUp, m, n, k));
}

export function gram(x: Float32Array, rows: number, cols: number, y: Float32Array = x): Float32Array {
  return Float32Array.from(gram64(x, rows, cols, y));
}

export function accumulateGram(h: Float64Array, x: Float32Array, rows: number, cols: number, keep: number, add: number): void {
  const g = gram64(x, rows, cols, x);
  for (let i = 0; i < cols; i++) for (let j = i; j < cols; j++) h[i * cols + j] = h[i * cols + j]! * keep + add * g[i * cols + j]!;
}

function gram64(x: Float32Array, rows: number, cols: number, y: Float32Array): Float64Array {
  const g = new Float64Array(cols * cols);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    for (let i = 0; i < cols; i++) {
      const xi = x[o + i]!;
      if (xi === 0) continue;
      for (let j = 0; j < cols; j++) g[i * cols + j]! += xi * y[o + j]!;
    }
  }
  return g;
}

export function attention(q: Float32Array, k: Float32Array, v: Float32Array, s: AttentionShape): Float32Array {
  const { batch, seq, ctx, heads, kvHeads, headDim } = s;
  const out = new Float32Array(batch * seq * heads * headDim);
  const scale = 1 / Math.sqrt(headDim);
  const group = heads / kvHeads;
  const scores = new Float64Array(ctx);
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < seq; t++) {
      const last = ctx - seq + t; // causal: attend to positions first..last
      const first = Math.max(0, last - (s.window ?? Infinity) + 1);
      for (let h = 0; h < heads; h++) {
        const kh = Math.floor(h / group);
        const qo = ((b * seq + t) * heads + h) * headDim;
        let max = -Infinity;
        for (let j = first; j <= last; j++) {
          const ko = kvOffset(s, b, j, kh);
          let dot = 0;
          for (let d = 0; d < headDim; d++) dot += q[qo + d]! * k[ko + d]!;
          scores[j] = (s.softcap ? s.softcap * Math.tanh((dot * scale) / s.softcap) : dot * scale) + (s.alibi ? s.alibi[h]! * j : 0);
          if (scores[j]! > max) max = scores[j]!;
        }
        let sum = 0;
        for (let j = first; j <= last; j++) {
          scores[j] = Math.exp(scores[j]! - max);
          sum += scores[j]!;
        }
        for (let j = first; j <= last; j++) {
          const p = scores[j]! / sum;
          const vo = kvOffset(s, b, j, kh);
          for (let d = 0; d < headDim; d++) out[qo + d]! += p * v[vo + d]!;
        }
      }
    }
  }
  return out;
}

/** log-softmax of one row of logits, in float64 */
function logSoftmaxRow(logits: Float32Array, offset: number, n: number, out: Float64Array): void {
  let max = -Infinity;
  for (let j = 0; j < n; j++) max = Math.max(max, logits[offset + j]!);
  let sum = 0;
  for (let j = 0; j < n; j++) sum += Math.exp(logits[offset + j]! - max);
  const lse = max + Math.log(sum);
  for (let j = 0; j < n; j++) out[j] = logits[offset + j]! - lse;
}

function argmax(x: Float64Array): number {
  let best = 0;
  for (let j = 1; j < x.length; j++) if (x[j]! > x[best]!) best = j;
  return best;
}

/** The definition: the whole head widened, the logits formed, then logitStats (slicing is the fast backends' business). */
export function headStats(
  h: Float32Array,
  w: StoredRows,
  m: number,
  d: number,
  vocab: number,
  targets: Int32Array,
  opts: HeadStatsOptions = {},
): HeadStats {
  const logits = (x: Float32Array, t: StoredRows): Float32Array => matmulNT(x, rowsF32(t, 0, vocab, d), m, vocab, d);
  return logitStats(logits(h, w), m, vocab, targets, opts.ref && logits(opts.ref.h, opts.ref.w));
}

/** headStats from logits already formed [m, vocab] (and a reference's): NLL of the targets, KL, top-1 agreement. */
export function logitStats(logits: Float32Array, m: number, vocab: number, targets: Int32Array, refLogits?: Float32Array): HeadStats {
  const nll = new Float32Array(m);
  const kl = refLogits ? new Float32Array(m) : undefined;
  const agree = refLogits ? new Uint8Array(m) : undefined;
  const lp = new Float64Array(vocab);
  const lr = new Float64Array(vocab);
  for (let i = 0; i < m; i++) {
    logSoftmaxRow(logits, i * vocab, vocab, lp);
    nll[i] = -lp[targets[i]!]!;
    if (refLogits) {
      logSoftmaxRow(refLogits, i * vocab, vocab, lr);
      let s = 0;
      for (let j = 0; j < vocab; j++) s += Math.exp(lr[j]!) * (lr[j]! - lp[j]!);
      kl![i] = s;
      agree![i] = argmax(lp) === argmax(lr) ? 1 : 0;
    }
  }
  return kl ? { nll, kl, agree: agree! } : { nll };
}

/**
 * y[m, rows] = x[m, cols] · Wᵀ read straight from GPTQ-packed words: W(r, c) = scale[g, r]·(code(c, r) − zero(g, r)),
 * g = gIdx[c]. Accumulates in float64; the definition the fast packed kernels are tested against.
 */
export function packedMatmul(p: PackedLinearWeights, x: Float32Array, m: number): Float32Array {
  const { rows, cols, bits, qweight, qzeros, scales, gIdx } = p;
  const zeroWords = (rows * bits) / 32;
  const acc = new Float64Array(m * rows);
  for (let c = 0; c < cols; c++) {
    const g = gIdx[c]!;
    for (let r = 0; r < rows; r++) {
      const code = streamValue((w) => qweight[w * rows + r]!, c, bits);
      const zero = streamValue((w) => qzeros[g * zeroWords + w]!, r, bits);
      const wt = scales[g * rows + r]! * (code - zero);
      for (let i = 0; i < m; i++) acc[i * rows + r]! += x[i * cols + c]! * wt;
    }
  }
  return Float32Array.from(acc);
}

/** A kernel whose output becomes the gated activation when `opts.gated` asks for it (LinearOptions). */
export function withGatedOutput(k: LinearKernel, opts: LinearOptions = {}): LinearKernel {
  if (!opts.gated) return k;
  const half = k.rows / 2;
  return {
    ...k,
    gated: opts.gated,
    async apply(x, m) {
      const y = await k.apply(x, m);
      const g = new Float32Array(m * half);
      const u = new Float32Array(m * half);
      for (let r = 0; r < m; r++) {
        g.set(y.subarray(r * k.rows, r * k.rows + half), r * half);
        u.set(y.subarray(r * k.rows + half, (r + 1) * k.rows), r * half);
      }
      return siluMul(g, u);
    },
  };
}

/**
 * ResidualMlpKernel as its definition: the backend's own kernels and norm, one step after another (the reference
 * backend's form of it, and what tests hold a fused kernel to).
 */
export async function residualMlpSteps(b: Backend, w: ResidualMlpWeights, activations: ActivationPrecision): Promise<ResidualMlpKernel> {
  const o = await b.packedLinear(w.o, activations);
  const gateUp = await b.packedLinear(w.gateUp, activations, { gated: 'silu' });
  const down = await b.packedLinear(w.down, activations);
  // the closure keeps the norm, not `w`: its packed layers (the prepared kernels' source) would stay alive with it
  const { norm, eps } = w;
  return {
    weightBytes: o.weightBytes + gateUp.weightBytes + down.weightBytes,
    async apply(x, att, m) {
      const x1 = await o.apply(att, m);
      for (let i = 0; i < x1.length; i++) x1[i] = x[i]! + x1[i]!;
      const y = await down.apply(await gateUp.apply(await b.rmsNorm(x1, norm, m, eps), m), m);
      for (let i = 0; i < y.length; i++) y[i] = x1[i]! + y[i]!;
      return y;
    },
    dispose: async () => {
      await Promise.all([o.dispose(), gateUp.dispose(), down.dispose()]);
    },
  };
}

export const refBackend: Backend = {
  name: 'ref',
  floatLinear: async (w, rows, cols, opts): Promise<LinearKernel> =>
    withGatedOutput(
      {
        rows,
        cols,
        weightBytes: w.byteLength,
        apply: async (x, m) => matmulNT(x, w, m, rows, cols),
        dispose: async () => {},
      },
      opts,
    ),
  packedLinear: async (p, _activations, opts): Promise<LinearKernel> =>
    withGatedOutput(
      {
        rows: p.rows,
        cols: p.cols,
        weightBytes: p.qweight.byteLength + p.qzeros.byteLength + p.scales.byteLength + p.gIdx.byteLength,
        apply: async (x, m) => packedMatmul(p, x, m),
        dispose: async () => {},
      },
      opts,
    ),
  packedResidualMlp: (w, activations) => residualMlpSteps(refBackend, w, activations),
  matmulNT: async (a, b, m, n, k, addend) => {
    const c = matmulNT(a, b, m, n, k);
    if (addend) for (let i = 0; i < c.length; i++) c[i] = addend[i]! + c[i]!;
    return c;
  },
  matmulNN: async (a, b, m, n, k) => matmulNT(a, transpose(b, k, n), m, n, k),
  matmul64: async (a, b, m, n, k, transB, more) => {
    const c = matmulNT(more?.transA ? transpose(a, k, m) : a, transB ? b : transpose(b, k, n), m, n, k);
    if (!more?.out) return c;
    more.out.set(c);
    return more.out;
  },
  rmsNorm: async (x, w, rows, eps) => rmsNorm(x, w, rows, eps),
  swiglu: async (h, wg, wu, m, n, k) => swiglu(h, wg, wu, m, n, k),
  gram: async (x, rows, cols, y) => gram(x, rows, cols, y),
  accumulateGram: async (h, x, rows, cols, keep, add) => accumulateGram(h, x, rows, cols, keep, add),
  attention: async (q, k, v, s) => attention(q, k, v, s),
  headStats: async (h, w, m, d, vocab, targets, opts) => headStats(h, w, m, d, vocab, targets, opts),
};
