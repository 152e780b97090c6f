import { upperCholeskyOfInverse, upperCholeskyOfInverseBlocked, type Gemm64 } from '../tensor/cholesky.js';
import { fitGrid, roundHalfEven, type GridOptions, type RowGrid } from './quantizer.js';
import { packFactors, type QuantizedLayer } from './quantized-layer.js';
import { BLOCK_LAYOUTS, GGML_TYPES, typeForRows, type Block, type BlockType } from '../formats/ggml-blocks.js';
import { fitBlock } from './ggml-grid.js';
import { SweepColumns } from '../tensor/sweep-column.js';

/**
 * GPTQ (Frantar et al., 2022) for one linear layer W [rows, cols] given the Hessian H = 2/n·Σ x·xᵀ of its inputs.
 * Columns are quantized one at a time; each column's rounding error, scaled by the inverse Hessian's upper
 * Cholesky factor U, is spread over the columns not yet quantized. Updates inside a block of `blocksize`
 * columns are immediate; the rest of the matrix gets them once per block as one matrix product (lazy batch).
 * The fast path (a backend's matmulNN) batches the same way once more inside each block, in runs of RUN columns.
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
  /**
   * sweep over a llama.cpp block type's grid instead of groups (GGUF export): each block's factors are fitted when
   * the sweep reaches its first column, on the weights as updated so far (contiguous columns: no act-order)
   */
  blockType?: BlockType;
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
  const dead = new Uint8Array(cols);
  // inputs that are always zero: nothing to learn about them; make H invertible (the sweep zeroes their weights)
  const diag = Float64Array.from({ length: cols }, (_, i) => hessian[i * cols + i]!);
  diag.forEach((d, i) => {
    if (d === 0) [dead[i], diag[i]] = [1, 1];
  });

  let perm: Int32Array | undefined;
  if (opts.actOrder) perm = argsortDescending(diag);
  else if (opts.order === 'reverse') perm = Int32Array.from({ length: cols }, (_, i) => cols - 1 - i);
  const at = (i: number): number => (perm ? perm[i]! : i);
  /** a fresh copy of m in sweep order (the factorization consumes its input) */
  const swept = (m: Float64Array): Float64Array => {
    if (!perm) return m.slice();
    const out = new Float64Array(cols * cols);
    for (let i = 0; i < cols; i++) for (let j = 0; j < cols; j++) out[i * cols + j] = m[perm[i]! * cols + perm[j]!]!;
    return out;
  };

  let meanDiag = 0;
  for (let i = 0; i < cols; i++) meanDiag += diag[at(i)]! / cols;
  let percdamp = opts.percdamp;
  let U: Float64Array | undefined;
  // Without a permutation the blocked factorization works on H itself: it only reads it, so H is restored exactly
  // afterwards by putting the undamped diagonal back, sparing an n×n copy (1 GB at 11008 columns) per attempt.
  const inPlace = !perm && gemm64 !== undefined;
  const original = inPlace ? Float64Array.from({ length: cols }, (_, i) => hessian[i * cols + i]!) : undefined;
  for (let attempt = 0; ; attempt++) {
    const Hd = inPlace ? hessian : swept(hessian);
    for (let i = 0; i < cols; i++) Hd[i * cols + i] = diag[at(i)]! + percdamp * meanDiag;
    try {
      U = gemm64 ? await upperCholeskyOfInverseBlocked(Hd, cols, gemm64) : upperCholeskyOfInverse(Hd, cols);
    } finally {
      if (original) for (let i = 0; i < cols; i++) hessian[i * cols + i] = original[i]!;
    }
    if (U) break;
    if (attempt === MAX_DAMP_RAISES) throw new Error(`Hessian is not positive definite even with damping ${percdamp}`);
    const raised = percdamp === 0 ? 1e-4 : percdamp * 10;
    warn(`Cholesky failed with percdamp ${percdamp}; retrying with ${raised}`);
    percdamp = raised;
  }
  const dXXt = asym && swept(asym.dXXt);
  for (let i = 0; i < cols; i++) if (dXXt && dead[at(i)]) for (let r = 0; r < cols; r++) dXXt[r * cols + i] = 0;
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
  /** @deprecated every product of the sweep is A·B now (matmulNN); accepted until callers stop passing it */
  matmulNT?: (a: Float32Array, b: Float32Array, m: number, n: number, k: number) => Promise<Float32Array>;
  /**
   * Runs the updates' matrix products (float32, C = A·B) on a fast backend, and with it the sweep batches
   * updates inside each block too (see gptq()); without it every update is the float64 loop of
   * subtractUpdates, the definition the tests hold the fast path to.
   */
  matmulNN?: (a: Float32Array, b: Float32Array, m: number, n: number, k: number) => Promise<Float32Array>;
  /** Float64 gemm for the blocked factorization of H; without it the plain float64 routines run. */
  matmul64?: Gemm64;
}

/**
 * Columns per run of the fast path: inside a block, updates are immediate only within runs of this many
 * columns, and each run gathers what the block's earlier runs owe it as one product when it starts (the lazy
 * batch one level down, left-looking), so the scalar loop does a small part of the block's update work. On a
 * 4096 x 4096 layer (loaded 2-core machine, best of 4) runs of 2-8 columns swept in 1.9-2.5 s, 16 in 2.6-3.1 s,
 * 32 in 3.5 s.
 */
const RUN = 8;

/**
 * Blocks per gather of the left-looking fast path: the first block of each run of GATHER blocks gathers what every
 * earlier column owes the whole run as one product, and the run's later blocks then gather only from the run's
 * earlier blocks. The products' flop is the same as one gather per block, but each has GATHER times the output
 * rows for the same packing of its large operand (the errors, [columns so far, rows]): MLAS ran an A·B of
 * 128 x 2048 by 2048 x 4096 at 68 GFLOP/s, 512 rows at 81 (on a loaded machine).
 */
const GATHER = 4;

export async function gptq(
  weight: Float32Array,
  hessian: Float64Array,
  rows: number,
  cols: number,
  opts: GptqOptions,
  extras: SweepExtras = {},
): Promise<GptqResult> {
  const { asym, levels, matmulNN: fast } = extras;
  const warn = extras.warn ?? ((): void => {});
  if (levels && opts.groupSize > 0) throw new Error('a per-row level grid has no groups');
  const { bits, groupSize: gs } = opts;
  const maxq = 2 ** bits - 1;
  const blockType = opts.blockType && typeForRows(opts.blockType, cols);
  const ggml = blockType && BLOCK_LAYOUTS[blockType];
  if (ggml && opts.actOrder) throw new Error(`${blockType} blocks are runs of contiguous columns: no act-order`);
  // a block's levels are fitted on columns the lazy batch has fully updated: blocks nest in the sweep's blocks
  const blocksize = ggml ? Math.ceil(opts.blocksize / ggml.size) * ggml.size : opts.blocksize;

  // the reference fits the per-row grid before zeroing dead columns
  const channelGrid = gs > 0 || ggml ? undefined : fitGrid(weight, rows, cols, 0, cols, opts);

  const { dead, perm, U, P, percdamp } = extras.prepared ?? (await prepareHessian(hessian, cols, opts, warn, asym, extras.matmul64));
  const W = sweepMatrix(weight, rows, cols, perm, dead);
  const position = perm ? new Int32Array(cols) : undefined;
  perm?.forEach((orig, col) => (position![orig] = col));

  const staticGrids: RowGrid[] = [];
  if (opts.staticGroups && gs > 0) {
    for (let c = 0; c < cols; c += gs) {
      const members = Array.from({ length: Math.min(gs, cols - c) }, (_, k) => (position ? position[c + k]! : c + k));
      staticGrids.push(fitColumns(W, rows, members, opts));
    }
  }

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

  const blocks: Block[] | undefined = ggml && new Array<Block>((rows * cols) / ggml.size);
  let blockLevels: RowLevels[] = [];
  let loss = 0;
  let grid = channelGrid;
  // the block's scaled errors and (GPTQv2) quantized values, [column, row] like W
  const Err1 = new Float64Array(blocksize * rows);
  const Q1 = P && new Float64Array(blocksize * rows);
  /*
   * The fast path keeps every column's errors in float32 for the backend's products, and runs the lazy batch
   * left-looking when the groups allow: instead of W[i2:] −= U[i1:i2, i2:]ᵀ·Err1 after each block (an output
   * as large as the rest of the matrix, every block), a block gathers everything owed to it when it starts,
   * W[i1:i2] −= U[:i1, i1:i2]ᵀ·E[:i1], in runs of GATHER blocks whose first gathers for the whole run (see
   * there). Each block starts from the same W either way; only the order of float32 sums differs. It needs every
   * group grid to be fitted inside its own block (a grid read past i2 would miss updates not yet gathered), so
   * groups must nest in blocks.
   */
  const E = fast && new Float32Array(cols * rows);
  const Q = fast && P && new Float32Array(cols * rows);
  /** W[c0:c1] −= U[k0:k1, c0:c1]ᵀ·E[k0:k1] (GPTQv2: − P[k0:k1, c0:c1]ᵀ·V), on the backend */
  const owed = (c0: number, c1: number, k0: number, k1: number, V?: Float32Array): Promise<void> =>
    subtractProducts(fast!, W, rows, cols, [c0, c1], U, E!.subarray(k0 * rows, k1 * rows), k0, P, V);
  const leftLooking = fast && !(gs > 0 && !opts.staticGroups && blocksize % gs !== 0);
  const inner = fast ? RUN : blocksize;
  // the affine grids' runs on the SIMD kernel: the same bits as the loop below, which keeps every other case
  const simd = fast && !P && !levels && !ggml && rows % 2 === 0 ? new SweepColumns(rows, RUN, blocksize) : undefined;
  for (let i1 = 0; i1 < cols; i1 += blocksize) {
    const i2 = Math.min(i1 + blocksize, cols);
    const count = i2 - i1;
    if (leftLooking && i1 > 0) {
      // the gather that starts at s0 brought everything owed by the columns before it
      const s0 = i1 - (i1 % (GATHER * blocksize));
      const [c1, k0] = i1 === s0 ? [Math.min(i1 + GATHER * blocksize, cols), 0] : [i2, s0];
      await owed(i1, c1, k0, i1, Q?.subarray(k0 * rows, i1 * rows));
    }
    // The grid of each column of the block. As in the reference, a group's grid is fitted on W holding every
    // update made before this block but none of its in-block updates, so all of them are fitted up front.
    const gridOf: (RowGrid | RowLevels | undefined)[] = [];
    for (let i = 0; i < count; i++) {
      const col = i1 + i;
      const orig = perm ? perm[col]! : col;
      if (ggml) {
        if (col % ggml.size === 0) blockLevels = fitBlockLevels(blockType!, W, rows, cols, col, blocks!);
        gridOf.push(blockLevels[Math.floor((col % ggml.size) / ggml.sub)]);
        continue;
      }
      if (gs > 0) {
        if (opts.staticGroups) {
          grid = staticGrids[Math.floor(orig / gs)]!;
          gIdx[orig] = Math.floor(orig / gs);
        } else {
          if (col % gs === 0) {
            // the group's columns are contiguous in W [column, row]: fitted in place, column-major
            grid = fitGrid(W, rows, 1, col * rows, Math.min(gs, cols - col), opts, rows);
            setGroup(col / gs, grid);
          }
          gIdx[orig] = Math.floor(col / gs);
        }
      }
      gridOf.push(grid);
    }
    for (let j1 = 0; j1 < count; j1 += inner) {
      const j2 = Math.min(j1 + inner, count);
      // what the block's earlier runs owe this one, gathered as one product (GPTQv2: with their unquantized values)
      if (fast && j1 > 0) await owed(i1 + j1, i1 + j2, i1, i1 + j1, P && new Float32Array(W.subarray(i1 * rows, (i1 + j1) * rows)));
      if (simd) {
        loss = sweepRunSimd(simd, W, U, E!, gridOf as RowGrid[], cols, i1, j1, j2, maxq, loss);
        continue;
      }
      for (let i = j1; i < j2; i++) {
        const col = i1 + i;
        const w = W.subarray(col * rows, (col + 1) * rows);
        const err = Err1.subarray(i * rows, (i + 1) * rows);
        const at = [i * rows, (i + 1) * rows] as const;
        const g = gridOf[i];
        const rowLevels = g && 'values' in g ? g : levels;
        const rowGrid = g && 'scale' in g ? g : undefined;
        const code = { codes, at: perm ? perm[col]! : col, stride: cols };
        loss += quantizeColumn(w, U[col * cols + col]!, rowGrid, rowLevels, maxq, code, err, Q1?.subarray(...at));
        // immediate update of the rest of the run (GPTQv2: steered with the unquantized column)
        subtractUpdates(W, rows, cols, [col + 1, i1 + j2], U, err, col, P, w);
        if (E) E.set(err, col * rows);
        if (Q) Q.set(Q1!.subarray(...at), col * rows);
      }
    }
    if (simd) copyCodes(simd.codes(), blocksize, codes, rows, cols, i1, count, perm);
    // lazy batch update of everything after the block: W[i2:] −= U[i1:i2, i2:]ᵀ·Err1
    // (GPTQv2: − P[i1:i2, i2:]ᵀ·Q1, Q1 being what the reference's W1 holds once its block is done)
    if (i2 < cols && !leftLooking) {
      if (fast) await owed(i2, cols, i1, i2, Q?.subarray(i1 * rows, i2 * rows));
      else subtractUpdates(W, rows, cols, [i2, cols], U, Err1.subarray(0, count * rows), i1, P, Q1);
    }
  }
  const layer: QuantizedLayer = { rows, cols, bits, groupSize: gs, sym: opts.sym, codes, scales, zeros, gIdx };
  if (blocks) Object.assign(layer, { ggmlType: GGML_TYPES[blockType!], blockFactors: packFactors(blockType!, blocks) });
  return { layer, loss, percdamp };
}

/**
 * One run of the fast path, columns [i1 + j1, i1 + j2) of W, on the SIMD kernel: quantizeColumn and the run's
 * immediate updates, as the loop in gptq() does them. The run's columns of W keep their loaded values: nothing
 * reads them once the run is quantized (grids are fitted when their block starts). Returns `loss` with each
 * column's added in turn, as the loop adds them.
 */
function sweepRunSimd(
  k: SweepColumns,
  W: Float64Array,
  U: Float64Array,
  E: Float32Array,
  gridOf: RowGrid[],
  cols: number,
  i1: number,
  j1: number,
  j2: number,
  maxq: number,
  loss: number,
): number {
  const [c0, n] = [i1 + j1, j2 - j1];
  const rows = k.rows;
  k.load(W.subarray(c0 * rows, (c0 + n) * rows));
  for (let i = 0; i < n; i++) {
    const col = c0 + i;
    const grid = gridOf[j1 + i]!;
    k.grid(grid.scale, grid.zero);
    loss += k.quantize(i, U[col * cols + col]!, maxq, j1 + i);
    for (let j = i + 1; j < n; j++) k.update(j, i, U[col * cols + c0 + j]!);
  }
  E.set(k.errors(n), c0 * rows);
  return loss;
}

/** A block's codes [rows, stride], its first `count` columns, into the layer's [rows, cols] at its columns. */
function copyCodes(
  block: Uint8Array,
  stride: number,
  codes: Uint8Array,
  rows: number,
  cols: number,
  i1: number,
  count: number,
  perm: Int32Array | undefined,
): void {
  for (let r = 0; r < rows; r++) {
    const from = r * stride;
    if (!perm) {
      codes.set(block.subarray(from, from + count), r * cols + i1);
      continue;
    }
    for (let i = 0; i < count; i++) codes[r * cols + perm[i1 + i]!] = block[from + i]!;
  }
}

/**
 * Fit every row's block over columns [c0, c0 + size) of W [column, row] (the sweep's current weights), store the
 * factors, and return each sub-block's levels per row, ascending, with the codes they stand for.
 */
function fitBlockLevels(type: BlockType, W: Float64Array, rows: number, cols: number, c0: number, blocks: Block[]): RowLevels[] {
  const L = BLOCK_LAYOUTS[type];
  const n = 2 ** L.bits;
  const subs = L.size / L.sub;
  const perRow = cols / L.size;
  const out = Array.from({ length: subs }, () => ({
    values: new Float64Array(rows * n),
    codes: new Uint8Array(rows * n),
    levelsPerRow: n,
  }));
  const x = new Float32Array(L.size);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < L.size; i++) x[i] = W[(c0 + i) * rows + r]!;
    const { block, levels } = fitBlock(type, x);
    blocks[r * perRow + c0 / L.size] = block;
    for (let s = 0; s < subs; s++) {
      // every type's levels are monotonic in the code (a·q + b, or d times IQ4_NL's ascending table): ascending
      // as they are, or reversed when the factor is negative
      const down = levels[s * n + n - 1]! < levels[s * n]!;
      for (let k = 0; k < n; k++) {
        const code = down ? n - 1 - k : k;
        out[s]!.values[r * n + k] = levels[s * n + code]!;
        out[s]!.codes[r * n + k] = code;
      }
    }
  }
  return out;
}

/**
 * Rounds a column x (one weight per row) to each row's grid, or to its levels: writes the codes (row r's at
 * codes[at + r·stride], its place in the row-major layer), the errors scaled by 1/d (d = U_ii) and the rounded
 * values (when asked); returns the column's part of the loss.
 */
export function quantizeColumn(
  x: Float64Array,
  d: number,
  grid: RowGrid | undefined,
  levels: RowLevels | undefined,
  maxq: number,
  { codes, at, stride }: { codes: Uint8Array; at: number; stride: number },
  err: Float64Array,
  rounded: Float64Array | undefined,
): number {
  let loss = 0;
  const rows = x.length;
  if (levels) {
    const { values, codes: levelCodes, levelsPerRow: n } = levels;
    for (let r = 0; r < rows; r++) {
      const k = nearestLevel(values, r * n, n, x[r]!);
      codes[at + r * stride] = levelCodes[k]!;
      const e = (x[r]! - values[k]!) / d;
      loss += (e * e) / 2;
      err[r] = e;
      if (rounded) rounded[r] = values[k]!;
    }
    return loss;
  }
  // the affine grid, quantizeValue written out: this loop is a good part of a sweep's time
  const { scale, zero } = grid!;
  for (let r = 0; r < rows; r++) {
    const v = x[r]!;
    const s = scale[r]!;
    const z = zero[r]!;
    let q = roundHalfEven(v / s) + z;
    q = q < 0 ? 0 : q > maxq ? maxq : q;
    const qv = s * (q - z);
    codes[at + r * stride] = q;
    const e = (v - qv) / d;
    loss += (e * e) / 2;
    err[r] = e;
    if (rounded) rounded[r] = qv;
  }
  return loss;
}

/**
 * The weights transposed to [column, row] in sweep order, dead columns zero: a column's update is then one
 * contiguous run and any span of columns a matrix the backend multiplies in place. Square tiles keep the rows
 * read and the columns written in cache.
 */
function sweepMatrix(weight: Float32Array, rows: number, cols: number, perm: Int32Array | undefined, dead: Uint8Array): Float64Array {
  const W = new Float64Array(cols * rows);
  const TILE = 64;
  for (let r0 = 0; r0 < rows; r0 += TILE) {
    const r1 = Math.min(r0 + TILE, rows);
    for (let c0 = 0; c0 < cols; c0 += TILE) {
      for (let c = c0; c < Math.min(c0 + TILE, cols); c++) {
        const orig = perm ? perm[c]! : c;
        if (dead[orig]) continue;
        for (let r = r0; r < r1; r++) W[c * rows + r] = weight[r * cols + orig]!;
      }
    }
  }
  return W;
}

/** fitGrid over the given columns of W [column, row], as it fits the same columns of a row-major matrix. */
function fitColumns(W: Float64Array, rows: number, columns: number[], opts: GridOptions): RowGrid {
  const width = columns.length;
  const slice = new Float64Array(rows * width);
  columns.forEach((c, k) => {
    for (let r = 0; r < rows; r++) slice[r * width + k] = W[c * rows + r]!;
  });
  return fitGrid(slice, rows, width, 0, width, opts);
}

/**
 * Every update of the sweep, in float64: W[c] −= Σ_k (E[k]·U[k, c] − V[k]·P[k, c]) for the columns c of
 * [c0, c1) and the rows k of U from k0 on, one per row of E ([k, row], as W). One column's immediate update
 * is the case of one k; the reference's lazy batch that of a block. Each weight takes its terms in order of k.
 */
export function subtractUpdates(
  W: Float64Array,
  rows: number,
  cols: number,
  [c0, c1]: readonly [number, number],
  U: Float64Array,
  E: Float64Array,
  k0: number,
  P?: Float64Array,
  V?: Float64Array,
): void {
  const k1 = k0 + E.length / rows;
  for (let c = c0; c < c1; c++) {
    const w = c * rows;
    for (let k = k0; k < k1; k++) {
      const e = (k - k0) * rows;
      const u = U[k * cols + c]!;
      for (let r = 0; r < rows; r++) W[w + r]! -= E[e + r]! * u;
      if (!P) continue;
      const p = P[k * cols + c]!;
      for (let r = 0; r < rows; r++) W[w + r]! += V![e + r]! * p;
    }
  }
}

/** subtractUpdates as float32 products on the backend: W[c0:c1] −= U[k0:k1, c0:c1]ᵀ·E − P[k0:k1, c0:c1]ᵀ·V. */
async function subtractProducts(
  matmulNN: NonNullable<SweepExtras['matmulNN']>,
  W: Float64Array,
  rows: number,
  cols: number,
  [c0, c1]: readonly [number, number],
  U: Float64Array,
  E: Float32Array,
  k0: number,
  P?: Float64Array,
  V?: Float32Array,
): Promise<void> {
  const m = c1 - c0;
  const k = E.length / rows;
  const apply = async (M: Float64Array, B: Float32Array, sign: number): Promise<void> => {
    const a = new Float32Array(m * k);
    for (let j = 0; j < k; j++) {
      const row = (k0 + j) * cols + c0;
      for (let c = 0; c < m; c++) a[c * k + j] = M[row + c]!;
    }
    const prod = await matmulNN(a, B, m, rows, k);
    const w = W.subarray(c0 * rows, c1 * rows);
    for (let i = 0; i < prod.length; i++) w[i]! -= sign * prod[i]!;
  };
  await apply(U, E, 1);
  if (P) await apply(P, V!, -1);
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
