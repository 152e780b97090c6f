import { roundToHalf } from '../io/fp16.js';

/**
 * The affine quantization grid of the reference GPTQ code: q = clamp(round(x/scale) + zero, 0, maxq),
 * x̂ = scale·(q − zero). The range always contains 0; symmetric grids put zero at (maxq+1)/2 with
 * scale = 2·absmax/maxq; asymmetric ones use zero = round(−min/scale). An all-zero row gets range [−1, 1].
 * Scales are rounded to fp16 before use, so an exported checkpoint holds exactly what was evaluated.
 */
export interface GridOptions {
  bits: number;
  sym: boolean;
  /** search shrunken ranges for the lowest ‖x − x̂‖_2.4 (the reference's --mse option) */
  mse: boolean;
  /**
   * round scales to fp16 as they are fitted (default), so what is evaluated is exactly what a GPTQ checkpoint
   * stores; false keeps float32 scales as the reference code does (its checkpoints round them at packing)
   */
  fp16Scales: boolean;
}

export const SUPPORTED_BITS = [2, 3, 4, 8];

const ROUNDER = 1.5 * 2 ** 52;
const ROUNDER_LIMIT = 2 ** 51;

/** torch.round: half to even */
export function roundHalfEven(x: number): number {
  // Below 2^51 in magnitude, x + 1.5·2^52 lies where float64's spacing is 1, so the addition itself rounds x half
  // to even, and subtracting the constant back is exact (and gives +0, never -0). Twice as fast as the branchy
  // form below in the sweep, which calls this for every weight.
  if (x < ROUNDER_LIMIT && x > -ROUNDER_LIMIT) return x + ROUNDER - ROUNDER;
  const r = Math.round(x);
  // + 0 turns -0 into 0
  return (r - x === 0.5 && r % 2 !== 0 ? r - 1 : r) + 0;
}

export function quantizeValue(x: number, scale: number, zero: number, maxq: number): number {
  const q = roundHalfEven(x / scale) + zero;
  return q < 0 ? 0 : q > maxq ? maxq : q;
}

/**
 * Grid parameters of each row of a [rows, width] slice: columns c0..c0+width of a row-major [rows, stride] matrix,
 * or with colStride, element (r, c) at w[r·stride + c0 + c·colStride] (a column-major matrix: stride 1, colStride
 * its rows; c0 then the first column's offset).
 */
export interface RowGrid {
  scale: Float64Array;
  zero: Float64Array;
}

const MSE_NORM = 2.4;
const MSE_GRID = 100;
const MSE_MAXSHRINK = 0.8;

function gridFor(xmin: number, xmax: number, maxq: number, sym: boolean, fp16: boolean): [number, number] {
  // a range below fp16's smallest subnormal would round to a zero scale
  const raw = (xmax - xmin) / maxq;
  const scale = fp16 ? Math.max(roundToHalf(raw), 2 ** -24) : raw;
  const zero = sym ? (maxq + 1) / 2 : roundHalfEven(-xmin / scale);
  return [scale, zero];
}

export function fitGrid(
  w: ArrayLike<number>,
  rows: number,
  stride: number,
  c0: number,
  width: number,
  opts: GridOptions,
  colStride = 1,
): RowGrid {
  const maxq = 2 ** opts.bits - 1;
  const scale = new Float64Array(rows);
  const zero = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const o = r * stride + c0;
    let xmin = 0;
    let xmax = 0;
    for (let c = 0; c < width; c++) {
      const v = w[o + c * colStride]!;
      if (v < xmin) xmin = v;
      if (v > xmax) xmax = v;
    }
    if (opts.sym) {
      xmax = Math.max(-xmin, xmax);
      if (xmin < 0) xmin = -xmax;
    }
    if (xmin === 0 && xmax === 0) {
      xmin = -1;
      xmax = 1;
    }
    [scale[r], zero[r]] = gridFor(xmin, xmax, maxq, opts.sym, opts.fp16Scales);
    if (opts.mse) {
      let best = Infinity;
      for (let i = 0; i < MSE_MAXSHRINK * MSE_GRID; i++) {
        const p = 1 - i / MSE_GRID;
        const [s1, z1] = gridFor(p * xmin, p * xmax, maxq, opts.sym, opts.fp16Scales);
        let err = 0;
        for (let c = 0; c < width; c++) {
          const v = w[o + c * colStride]!;
          err += Math.abs(s1 * (quantizeValue(v, s1, z1, maxq) - z1) - v) ** MSE_NORM;
        }
        if (err < best) {
          best = err;
          scale[r] = s1;
          zero[r] = z1;
        }
      }
    }
  }
  return { scale, zero };
}
