import { gptq, type GptqOptions, type RowLevels, type SweepExtras } from './gptq.js';
import { roundHalfEven } from './quantizer.js';

/**
 * GPTQT (seed 003): quantize twice. First a linear grid at a higher bit width; then the resulting integer
 * weights of each row are re-expressed in a k-bit binary coding, w ≈ β + Σ_j α_j·b_j with b_j ∈ {−1, +1}.
 * A "re-explore" search over the initial linear scale keeps, per row, the scale whose final binary coding
 * is closest to the weights. GPTQ's sweep then runs on those 2^k levels per row, so its error compensation
 * accounts for the binary-coded values actually stored.
 *
 * Our reading of the method (the seed gives its outline, not every constant): the high bit width defaults to
 * bits + 2, the re-explore grid shrinks the row's range by factors 1.00, 0.95, …, 0.55, and the binary coding
 * is fitted by greedy residual initialisation followed by alternating least squares (assignment ↔ α, β).
 */
export interface GptqtOptions {
  /** bits of the binary coding (2 or 3) */
  bits: number;
  /** bits of the first, linear quantization */
  highBits: number;
}

/** One GPTQT layer: per row an offset β and k coefficients α; code bit j set ⇔ b_j = +1. */
export interface BinaryCodedLayer {
  rows: number;
  cols: number;
  bits: number;
  /** [rows, cols], k-bit codes */
  codes: Uint8Array;
  /** [rows, bits] */
  alpha: Float32Array;
  /** [rows] */
  beta: Float32Array;
}

/** The first, linear bit width: as given, else bits + 2. */
export function highBitsOf(o: { bits: number; highBits?: number }): number {
  return o.highBits ?? o.bits + 2;
}

const SHRINK = Array.from({ length: 10 }, (_, i) => 1 - 0.05 * i);
const ALS_ITERATIONS = 12;

/** The value of code c under coefficients alpha and offset beta. */
export function binaryLevel(c: number, alpha: ArrayLike<number>, beta: number, k: number): number {
  let v = beta;
  for (let j = 0; j < k; j++) v += (c >> j) & 1 ? alpha[j]! : -alpha[j]!;
  return v;
}

/**
 * Fit β, α (k terms) to integer values u with multiplicities n, minimizing Σ n·(u − level(u))². Returns the
 * coefficients and the squared error.
 */
export function fitBinaryCoding(u: Float64Array, n: Float64Array, k: number): { alpha: Float64Array; beta: number; error: number } {
  const total = n.reduce((a, b) => a + b, 0);
  let beta = u.reduce((a, v, i) => a + v * n[i]!, 0) / total;
  const alpha = new Float64Array(k);
  const resid = Float64Array.from(u, (v) => v - beta);
  for (let j = 0; j < k; j++) {
    alpha[j] = resid.reduce((a, r, i) => a + Math.abs(r) * n[i]!, 0) / total;
    for (let i = 0; i < u.length; i++) resid[i]! -= Math.sign(resid[i]!) * alpha[j]!;
  }
  const assign = new Int32Array(u.length);
  const nearest = (): number => {
    let err = 0;
    for (let i = 0; i < u.length; i++) {
      let best = 0;
      let bestErr = Infinity;
      for (let c = 0; c < 1 << k; c++) {
        const e = (u[i]! - binaryLevel(c, alpha, beta, k)) ** 2;
        if (e < bestErr) {
          bestErr = e;
          best = c;
        }
      }
      assign[i] = best;
      err += bestErr * n[i]!;
    }
    return err;
  };
  let error = nearest();
  for (let it = 0; it < ALS_ITERATIONS; it++) {
    // least squares for x = [β, α_1..α_k] with features [1, b_1..b_k] of each value's assigned code
    const m = k + 1;
    const A = new Float64Array(m * m);
    const y = new Float64Array(m);
    for (let i = 0; i < u.length; i++) {
      const f = [1, ...Array.from({ length: k }, (_, j) => ((assign[i]! >> j) & 1 ? 1 : -1))];
      for (let a = 0; a < m; a++) {
        y[a]! += n[i]! * f[a]! * u[i]!;
        for (let b = 0; b < m; b++) A[a * m + b]! += n[i]! * f[a]! * f[b]!;
      }
    }
    const x = solve(A, y, m);
    if (!x) break;
    const prev = { alpha: Float64Array.from(alpha), beta };
    beta = x[0]!;
    for (let j = 0; j < k; j++) alpha[j] = x[j + 1]!;
    const e = nearest();
    if (!(e < error - 1e-12)) {
      alpha.set(prev.alpha);
      beta = prev.beta;
      nearest();
      break;
    }
    error = e;
  }
  return { alpha, beta, error };
}

/** Gaussian elimination with partial pivoting; undefined when singular. */
function solve(A: Float64Array, y: Float64Array, m: number): Float64Array | undefined {
  const a = Float64Array.from(A);
  const b = Float64Array.from(y);
  for (let c = 0; c < m; c++) {
    let p = c;
    for (let r = c + 1; r < m; r++) if (Math.abs(a[r * m + c]!) > Math.abs(a[p * m + c]!)) p = r;
    if (Math.abs(a[p * m + c]!) < 1e-12) return undefined;
    for (let j = 0; j < m; j++) [a[c * m + j], a[p * m + j]] = [a[p * m + j]!, a[c * m + j]!];
    [b[c], b[p]] = [b[p]!, b[c]!];
    for (let r = 0; r < m; r++) {
      if (r === c) continue;
      const f = a[r * m + c]! / a[c * m + c]!;
      for (let j = 0; j < m; j++) a[r * m + j]! -= f * a[c * m + j]!;
      b[r]! -= f * b[c]!;
    }
  }
  return Float64Array.from({ length: m }, (_, i) => b[i]! / a[i * m + i]!);
}

/**
 * Per row: the two-step quantizer with re-explore. Returns each row's binary coding in weight units (α, β
 * already multiplied by the chosen linear scale) and the sorted level table the sweep uses.
 */
export function fitRowCodings(
  w: Float32Array,
  rows: number,
  cols: number,
  o: GptqtOptions,
): { alpha: Float32Array; beta: Float32Array; levels: RowLevels } {
  const k = o.bits;
  const maxq = 2 ** o.highBits - 1;
  const L = 1 << k;
  const alpha = new Float32Array(rows * k);
  const beta = new Float32Array(rows);
  const values = new Float64Array(rows * L);
  const codes = new Uint8Array(rows * L);
  for (let r = 0; r < rows; r++) {
    const row = w.subarray(r * cols, (r + 1) * cols);
    let xmin = 0;
    let xmax = 0;
    for (const v of row) {
      xmin = Math.min(xmin, v);
      xmax = Math.max(xmax, v);
    }
    if (xmin === 0 && xmax === 0) [xmin, xmax] = [-1, 1];
    let best = { err: Infinity, alpha: new Float64Array(k), beta: 0 };
    for (const p of SHRINK) {
      // step 1: the linear grid at the higher bit width, range shrunk by p
      const s = (p * (xmax - xmin)) / maxq;
      const z = roundHalfEven((-p * xmin) / s);
      const hist = new Map<number, number>();
      for (const v of row) {
        const q = Math.min(maxq, Math.max(0, roundHalfEven(v / s) + z)) - z;
        hist.set(q, (hist.get(q) ?? 0) + 1);
      }
      // step 2: binary coding of the integers, then judged on the real weights
      const fit = fitBinaryCoding(Float64Array.from(hist.keys()), Float64Array.from(hist.values()), k);
      const lv = Float64Array.from({ length: L }, (_, c) => s * binaryLevel(c, fit.alpha, fit.beta, k));
      let err = 0;
      for (const v of row) {
        let e = Infinity;
        for (const x of lv) e = Math.min(e, (v - x) ** 2);
        err += e;
      }
      if (err < best.err) best = { err, alpha: fit.alpha.map((a) => a * s), beta: fit.beta * s };
    }
    for (let j = 0; j < k; j++) alpha[r * k + j] = best.alpha[j]!;
    beta[r] = best.beta;
    const lv = Array.from({ length: L }, (_, c) => ({ c, v: binaryLevel(c, alpha.subarray(r * k, (r + 1) * k), beta[r]!, k) })).sort(
      (a, b) => a.v - b.v,
    );
    lv.forEach(({ c, v }, i) => {
      values[r * L + i] = v;
      codes[r * L + i] = c;
    });
  }
  return { alpha, beta, levels: { levelsPerRow: L, values, codes } };
}

/** GPTQ's sweep on the per-row binary-coded levels. */
export async function gptqt(
  weight: Float32Array,
  hessian: Float64Array,
  rows: number,
  cols: number,
  opts: GptqOptions & GptqtOptions,
  extras: Omit<SweepExtras, 'levels'> = {},
): Promise<{ layer: BinaryCodedLayer; loss: number; percdamp: number }> {
  const { alpha, beta, levels } = fitRowCodings(weight, rows, cols, opts);
  const r = await gptq(weight, hessian, rows, cols, opts, { ...extras, levels });
  return { layer: { rows, cols, bits: opts.bits, codes: r.layer.codes, alpha, beta }, loss: r.loss, percdamp: r.percdamp };
}

export function dequantizeBinary(q: BinaryCodedLayer): Float32Array {
  const { rows, cols, bits: k } = q;
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const a = q.alpha.subarray(r * k, (r + 1) * k);
    const table = Float32Array.from({ length: 1 << k }, (_, c) => binaryLevel(c, a, q.beta[r]!, k));
    for (let c = 0; c < cols; c++) out[r * cols + c] = table[q.codes[r * cols + c]!]!;
  }
  return out;
}
