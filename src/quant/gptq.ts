import { upperCholeskyOfInverse, upperCholeskyOfInverseBlocked, type Gemm64 } from '../tensor/cholesky.js';
import { fitGrid, quantizeValue, type GridOptions, type RowGrid } from './quantizer.js';
import type { QuantizedLayer } from './quantized-layer.js';

/**
 * GPTQ (Frantar et al., 2022) for one linear layer W [rows, cols] given the Hessian H = 2/n·Σ x·xᵀ of its inputs.
 * Columns are quantized one at a time; each column's rounding error, scaled by the inverse Hessian's upper
 * Cholesky factor U, is spread over the columns not yet quantized. Updates inside a block of `blocksize`
 * columns are immediate; the rest of the matrix gets them once per block as one matrix product (lazy batch).
 */
export interface GptqOptions extends GridOptions {
  /** columns per group, -1 for one grid per output row */
  groupSize: number;
  /** quantize columns in order of decreasing Hessian diagonal (desc_act) */
  actOrder: boolean;
  /** 'reverse' sweeps from the last column to the first: Babai's nearest-plane order (seed 001) */
  order: 'forward' | 'reverse';
  /** with actOrder and groups: fit every group's grid up front, on the natural column order */
  staticGroups: boolean;
  /** damping as a fraction of the mean Hessian diagonal */
  percdamp: number;
  blocksize: number;
}

/**
 * The reference code's setting (the paper's tables: per-channel, asymmetric, damping 0.01, blocks of 128): what
 * the algorithm's own tests and benchmarks start from. The command line defaults to PIPELINE_DEFAULTS instead.
 */
export const GPTQ_REFERENCE: GptqOptions = {
  bits: 4,
  sym: false,
  mse: false,
  fp16Scales: true,
  groupSize: -1,
  actOrder: false,
  order: 'forward',
  staticGroups: false,
  percdamp: 0.01,
  blocksize: 128,
};

/**
 * GPTQv2's asymmetric calibration (seed 001): match the full-precision model's output, not just the quantized
 * path's. dXXt = 2/n·Σ(x̃ − x)·xᵀ; the sweep then also applies P = α·triu₁(dXXᵀ·Uᵀ)·U to the weights.
 */
export interface AsymmetricCalibration {
  dXXt: Float64Array;
  alpha: number;
}

/**
 * A non-uniform grid per output row (GPTQT's binary coding): `values` holds each row's levels sorted ascending
 * (levelsPerRow of them) and `codes` the code stored for each level. Replaces the affine grid in the sweep.
 */
export interface RowLevels {
  levelsPerRow: number;
  values: Float64Array;
  codes: Uint8Array;
}

export interface GptqResult {
  layer: QuantizedLayer;
  /** Σ (w − q)² / U_ii² / 2: the reference's per-layer loss */
  loss: number;
  /** the damping actually used (raised from percdamp when H + damp·I was not positive definite) */
  percdamp: number;
}

const MAX_DAMP_RAISES = 8;

function argsortDescending(x: Float64Array): Int32Array {
  return Int32Array.from(x.keys()).sort((a, b) => x[b]! - x[a]! || a - b);
}

/**
 * Everything the sweep needs from the Hessian alone, so layers that share one (q, k, v; gate, up) factor it
 * once: dead inputs (diag 0 → H_ii = 1, their weights zeroed), the column order, the damped upper Cholesky
 * factor U of H⁻¹ in that order, GPTQv2's P, and the damping used.
 */
export interface PreparedHessian {
  dead: Uint8Array;
  perm: Int32Array | undefined;
  U: Float64Array;
  P: Float64Array | undefined;
  percdamp: number;
}

export async function prepareHessian(
  hessian: Float64Array,
  cols: number,
  opts: Pick<GptqOptions, 'actOrder' | 'order' | 'percdamp'>,
  warn: (msg: string) => void = () => {},
  asym?: AsymmetricCalibration,
  gemm64?: Gemm64,
): Promise<PreparedHessian> {
  const H = Float64Array.from(hessian);
  const dXXt = asym && Float64Array.from(asym.dXXt);
  const dead = new Uint8Array(cols);
  // inputs that are always zero: nothing to learn about them; make H invertible (the sweep zeroes their weights)
  for (let i = 0; i < cols; i++) {
    if (H[i * cols + i] === 0) {
      dead[i] = 1;
      H[i * cols + i] = 1;
      if (dXXt) for (let r = 0; r < cols; r++) dXXt[r * cols + i] = 0;
    }
  }

  let perm: Int32Array | undefined;
  if (opts.actOrder) perm = argsortDescending(Float64Array.from({ length: cols }, (_, i) => H[i * cols + i]!));
  else if (opts.order === 'reverse') perm = Int32Array.from({ length: cols }, (_, i) => cols - 1 - i);
  if (perm) {
    permuteBoth(H, cols, perm);
    if (dXXt) permuteBoth(dXXt, cols, perm);
  }

  let meanDiag = 0;
  for (let i = 0; i < cols; i++) meanDiag += H[i * cols + i]! / cols;
  let percdamp = opts.percdamp;
  let U: Float64Array | undefined;
  for (let attempt = 0; ; attempt++) {
    const Hd = Float64Array.from(H);
    for (let i = 0; i < cols; i++) Hd[i * cols + i]! += percdamp * meanDiag;
    U = gemm64 ? await upperCholeskyOfInverseBlocked(Hd, cols, gemm64) : upperCholeskyOfInverse(Hd, cols);
    if (U) break;
    if (attempt === MAX_DAMP_RAISES) throw new Error(`Hessian is not positive definite even with damping ${percdamp}`);
    const raised = percdamp === 0 ? 1e-4 : percdamp * 10;
    warn(`Cholesky failed with percdamp ${percdamp}; retrying with ${raised}`);
    percdamp = raised;
  }
  const P =
    dXXt &&
    (gemm64 ? await asymmetricCorrectionGemm(dXXt, U, cols, asym!.alpha, gemm64) : asymmetricCorrection(dXXt, U, cols, asym!.alpha));
  return { dead, perm, U, P, percdamp };
}

/** What a sweep may get besides the weights and Hessian. */
export interface SweepExtras {
  warn?: (msg: string) => void;
  asym?: AsymmetricCalibration;
  levels?: RowLevels;
  /** the Hessian already prepared (shared by a true-sequential group); `asym` and `warn` then go unused */
  prepared?: PreparedHessian;
  /**
   * Runs the lazy batch update's matrix product (float32, C = A·Bᵀ) on a fast backend; without it the update
   * is the float64 loop below, the definition the tests hold it to.
   */
  matmulNT?: (a: Float32Array, b: Float32Array, m: number, n: number, k: number) => Promise<Float32Array>;
  /** With it (and matmulNT) the fast path runs the updates left-looking when the groups allow (see gptq()). */
  matmulNN?: (a: Float32Array, b: Float32Array, m: number, n: number, k: number) => Promise<Float32Array>;
  /** Float64 gemm for the blocked factorization of H; without it the plain float64 routines run. */
  matmul64?: Gemm64;
}

export async function gptq(
  weight: Float32Array,
  hessian: Float64Array,
  rows: number,
  cols: number,
  opts: GptqOptions,
  extras: SweepExtras = {},
): Promise<GptqResult> {
  const { asym, levels } = extras;
  const warn = extras.warn ?? ((): void => {});
  if (levels && opts.groupSize > 0) throw new Error('a per-row level grid has no groups');
  const { bits, groupSize: gs, blocksize } = opts;
  const maxq = 2 ** bits - 1;
  const W = Float64Array.from(weight);

  // the reference fits the per-row grid before zeroing dead columns
  const channelGrid = gs > 0 ? undefined : fitGrid(W, rows, cols, 0, cols, opts);

  const { dead, perm, U, P, percdamp } = extras.prepared ?? (await prepareHessian(hessian, cols, opts, warn, asym, extras.matmul64));
  for (let i = 0; i < cols; i++) if (dead[i]) for (let r = 0; r < rows; r++) W[r * cols + i] = 0;

  const staticGrids: RowGrid[] = [];
  if (opts.staticGroups && gs > 0)
    for (let c = 0; c < cols; c += gs) staticGrids.push(fitGrid(W, rows, cols, c, Math.min(gs, cols - c), opts));
  if (perm) permuteColumns(W, rows, cols, perm);

  const G = gs > 0 ? Math.ceil(cols / gs) : 1;
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(rows * G);
  const zeros = new Int32Array(rows * G);
  const gIdx = new Int32Array(cols);
  const setGroup = (g: number, grid: RowGrid): void => {
    for (let r = 0; r < rows; r++) {
      scales[r * G + g] = grid.scale[r]!;
      zeros[r * G + g] = grid.zero[r]!;
    }
  };
  if (channelGrid) setGroup(0, channelGrid);
  staticGrids.forEach((grid, g) => setGroup(g, grid));

  let loss = 0;
  let grid = channelGrid;
  const W1 = new Float64Array(rows * blocksize);
  const Err1 = new Float64Array(rows * blocksize);
  const Q1 = new Float64Array(rows * blocksize);
  /*
   * The fast path may run the same updates left-looking: instead of W[:, i2:] −= Err1·U[i1:i2, i2:] after each
   * block (an output as large as the rest of the matrix, every block), a block gathers everything owed to it
   * when it starts, W[:, i1:i2] −= E[:, :i1]·U[:i1, i1:i2]. Each block starts from the same W either way; only
   * the order of float32 sums differs. It needs every group grid to be fitted inside its own block (a grid
   * read past i2 would miss updates not yet gathered), so groups must nest in blocks.
   */
  const leftLooking = extras.matmulNT && extras.matmulNN && !(gs > 0 && !opts.staticGroups && blocksize % gs !== 0);
  const owed = leftLooking ? new LeftLookingUpdates(rows, cols, U, P, extras.matmulNN!) : undefined;
  for (let i1 = 0; i1 < cols; i1 += blocksize) {
    const i2 = Math.min(i1 + blocksize, cols);
    const count = i2 - i1;
    await owed?.gather(W, i1, i2);
    for (let r = 0; r < rows; r++) for (let i = 0; i < count; i++) W1[r * count + i] = W[r * cols + i1 + i]!;
    // The grid of each column of the block. As in the reference, a group's grid is fitted on W, which holds
    // every update made before this block but none of its in-block updates (those go to W1), so all of the
    // block's grids can be fitted before its sweep.
    const gridOf: (RowGrid | undefined)[] = [];
    for (let i = 0; i < count; i++) {
      const col = i1 + i;
      const orig = perm ? perm[col]! : col;
      if (gs > 0) {
        if (opts.staticGroups) {
          grid = staticGrids[Math.floor(orig / gs)]!;
          gIdx[orig] = Math.floor(orig / gs);
        } else {
          if (col % gs === 0) {
            grid = fitGrid(W, rows, cols, col, Math.min(gs, cols - col), opts);
            setGroup(col / gs, grid);
          }
          gIdx[orig] = Math.floor(col / gs);
        }
      }
      gridOf.push(grid);
    }
    // The sweep itself, row by row: rows are independent within a block (each sees only its own W1 row and
    // the shared U), and a row's 128 values stay in cache while its columns are quantized in order.
    for (let r = 0; r < rows; r++) {
      const wr = r * count;
      for (let i = 0; i < count; i++) {
        const col = i1 + i;
        const orig = perm ? perm[col]! : col;
        const w = W1[wr + i]!;
        let q: number;
        let qv: number;
        if (levels) {
          const k = nearestLevel(levels.values, r * levels.levelsPerRow, levels.levelsPerRow, w);
          q = levels.codes[k]!;
          qv = levels.values[k]!;
        } else {
          const g = gridOf[i]!;
          const sc = g.scale[r]!;
          const z = g.zero[r]!;
          q = quantizeValue(w, sc, z, maxq);
          qv = sc * (q - z);
        }
        codes[r * cols + orig] = q;
        const err = (w - qv) / U[col * cols + col]!;
        loss += (err * err) / 2;
        Err1[wr + i] = err;
        Q1[wr + i] = qv;
        // immediate update of the rest of this block's row
        const ur = col * cols + i1;
        for (let j = i + 1; j < count; j++) W1[wr + j]! -= err * U[ur + j]!;
        // GPTQv2: also steer towards the full-precision model's output, with the unquantized value
        if (P) for (let j = i + 1; j < count; j++) W1[wr + j]! += w * P[ur + j]!;
      }
    }
    // lazy batch update of everything after the block: W[:, i2:] -= Err1 · U[i1:i2, i2:]
    // (GPTQv2: − Q1 · P[i1:i2, i2:], Q1 being what the reference's W1 holds once its block is done)
    if (owed) owed.record(i1, i2, Err1, Q1);
    else if (i2 < cols) {
      if (extras.matmulNT) await lazyUpdateFast(extras.matmulNT, W, rows, cols, i1, i2, Err1, U, P ? { Q1, P } : undefined);
      else lazyUpdate(W, rows, cols, i1, i2, Err1, U, P ? { Q1, P } : undefined);
    }
  }
  return { layer: { rows, cols, bits, groupSize: gs, sym: opts.sym, codes, scales, zeros, gIdx }, loss, percdamp };
}

function permuteColumns(W: Float64Array, rows: number, cols: number, perm: Int32Array): void {
  const row = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) row[c] = W[r * cols + perm[c]!]!;
    W.set(row, r * cols);
  }
}

function lazyUpdate(
  W: Float64Array,
  rows: number,
  cols: number,
  i1: number,
  i2: number,
  Err1: Float64Array,
  U: Float64Array,
  v2?: { Q1: Float64Array; P: Float64Array },
): void {
  const count = i2 - i1;
  for (let r = 0; r < rows; r++) {
    const wr = r * cols;
    for (let k = 0; k < count; k++) {
      const e = Err1[r * count + k]!;
      const ur = (i1 + k) * cols;
      if (e !== 0) for (let c = i2; c < cols; c++) W[wr + c]! -= e * U[ur + c]!;
      const qv = v2 ? v2.Q1[r * count + k]! : 0;
      if (qv !== 0) for (let c = i2; c < cols; c++) W[wr + c]! += qv * v2!.P[ur + c]!;
    }
  }
}

/** The same update as one float32 product [Err1 | −Q1] · [U; P] on the backend. */
async function lazyUpdateFast(
  matmulNT: NonNullable<SweepExtras['matmulNT']>,
  W: Float64Array,
  rows: number,
  cols: number,
  i1: number,
  i2: number,
  Err1: Float64Array,
  U: Float64Array,
  v2?: { Q1: Float64Array; P: Float64Array },
): Promise<void> {
  const count = i2 - i1;
  const k = v2 ? 2 * count : count;
  const n = cols - i2;
  const a = new Float32Array(rows * k);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < count; j++) {
      a[r * k + j] = Err1[r * count + j]!;
      if (v2) a[r * k + count + j] = -v2.Q1[r * count + j]!;
    }
  }
  const b = new Float32Array(n * k);
  for (let j = 0; j < count; j++) {
    const ur = (i1 + j) * cols + i2;
    for (let c = 0; c < n; c++) {
      b[c * k + j] = U[ur + c]!;
      if (v2) b[c * k + count + j] = v2.P[ur + c]!;
    }
  }
  const prod = await matmulNT(a, b, rows, n, k);
  for (let r = 0; r < rows; r++) for (let c = 0; c < n; c++) W[r * cols + i2 + c]! -= prod[r * n + c]!;
}

/** The errors of finished blocks, kept transposed ([column, row]) so that those of columns 0..i1 are one contiguous matrix. */
class LeftLookingUpdates {
  private readonly errT: Float32Array;
  private readonly qT?: Float32Array;

  constructor(
    private readonly rows: number,
    private readonly cols: number,
    private readonly U: Float64Array,
    private readonly P: Float64Array | undefined,
    private readonly matmulNN: NonNullable<SweepExtras['matmulNN']>,
  ) {
    this.errT = new Float32Array(cols * rows);
    if (P) this.qT = new Float32Array(cols * rows);
  }

  /** W[:, i1:i2] −= E[:, :i1]·U[:i1, i1:i2] (GPTQv2: + Q[:, :i1]·P[:i1, i1:i2]). */
  async gather(W: Float64Array, i1: number, i2: number): Promise<void> {
    if (i1 === 0) return;
    const { rows, cols } = this;
    const count = i2 - i1;
    const apply = async (M: Float64Array, T: Float32Array, sign: number): Promise<void> => {
      const a = new Float32Array(count * i1);
      for (let j = 0; j < count; j++) for (let c = 0; c < i1; c++) a[j * i1 + c] = M[c * cols + i1 + j]!;
      const prod = await this.matmulNN(a, T.subarray(0, i1 * rows), count, rows, i1);
      for (let j = 0; j < count; j++) for (let r = 0; r < rows; r++) W[r * cols + i1 + j]! -= sign * prod[j * rows + r]!;
    };
    await apply(this.U, this.errT, 1);
    if (this.P) await apply(this.P, this.qT!, -1);
  }

  record(i1: number, i2: number, Err1: Float64Array, Q1: Float64Array): void {
    const count = i2 - i1;
    for (let i = 0; i < count; i++) {
      for (let r = 0; r < this.rows; r++) {
        this.errT[(i1 + i) * this.rows + r] = Err1[r * count + i]!;
        if (this.qT) this.qT[(i1 + i) * this.rows + r] = Q1[r * count + i]!;
      }
    }
  }
}

/** Index (into values) of the level nearest to x among values[start .. start+n), which are sorted. */
export function nearestLevel(values: Float64Array, start: number, n: number, x: number): number {
  let lo = start;
  let hi = start + n - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (values[mid]! <= x) lo = mid;
    else hi = mid;
  }
  return Math.abs(x - values[lo]!) <= Math.abs(values[hi]! - x) ? lo : hi;
}

/** P = α · triu₁(dXXᵀ · Uᵀ) · U, triu₁ keeping the strictly upper triangle */
function asymmetricCorrection(dXXt: Float64Array, U: Float64Array, n: number, alpha: number): Float64Array {
  const A = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      // (dXXᵀ·Uᵀ)[i][j] = Σ_k dXXᵀ[i][k]·U[j][k], U[j][k] = 0 for k < j
      let s = 0;
      for (let k = j; k < n; k++) s += dXXt[i * n + k]! * U[j * n + k]!;
      A[i * n + j] = s;
    }
  }
  const P = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let k = i + 1; k < n; k++) {
      const a = alpha * A[i * n + k]!;
      if (a === 0) continue;
      for (let j = k; j < n; j++) P[i * n + j]! += a * U[k * n + j]!;
    }
  }
  return P;
}

/** The same product as two backend gemms (the loops above are its definition). */
async function asymmetricCorrectionGemm(
  dXXt: Float64Array,
  U: Float64Array,
  n: number,
  alpha: number,
  gemm: Gemm64,
): Promise<Float64Array> {
  const A = await gemm(dXXt, U, n, n, n, true);
  for (let i = 0; i < n; i++) A.fill(0, i * n, i * n + i + 1);
  const P = await gemm(A, U, n, n, n, false);
  for (let i = 0; i < P.length; i++) P[i]! *= alpha;
  return P;
}

function permuteBoth(H: Float64Array, n: number, perm: Int32Array): void {
  const src = Float64Array.from(H);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) H[i * n + j] = src[perm[i]! * n + perm[j]!]!;
}
