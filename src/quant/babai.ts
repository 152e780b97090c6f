import { cholesky } from '../tensor/cholesky.js';
import { roundHalfEven } from './quantizer.js';

/**
 * Babai's nearest-plane algorithm for the closest-vector problem, written independently of GPTQ (seed 001).
 *
 * A row w of a layer is quantized to q = s·(k − z), k integer, minimizing (w − q)ᵀ H (w − q). With H = Rᵀ·R
 * (R upper triangular) that is ‖R(w + s·z) − R·s·k‖²: the closest point to t = R(w + s·z) in the lattice
 * with basis B = s·R. Babai's algorithm picks k from the last basis vector to the first: at step i the
 * residual's i-th coordinate depends only on B's columns ≥ i, so k_i = round(y_i / B_ii), then y −= k_i·B_{:,i}.
 * GPTQ run back-to-front gives the same codes when nothing is clipped to the grid's range.
 *
 * Per-channel grid: scale[r] and zero[r] per row. Returns the unclamped integer codes [rows, cols].
 */
export function babaiNearestPlane(
  w: ArrayLike<number>,
  rows: number,
  cols: number,
  h: Float64Array,
  scale: ArrayLike<number>,
  zero: ArrayLike<number>,
): Float64Array {
  const l = cholesky(h, cols);
  if (!l) throw new Error('Babai: H is not positive definite');
  // R = Lᵀ, read as R[i][j] = L[j][i]
  const R = (i: number, j: number): number => l[j * cols + i]!;
  const codes = new Float64Array(rows * cols);
  const y = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const s = scale[r]!;
    const z = zero[r]!;
    for (let i = 0; i < cols; i++) {
      let t = 0;
      for (let j = i; j < cols; j++) t += R(i, j) * (w[r * cols + j]! + s * z);
      y[i] = t;
    }
    for (let i = cols - 1; i >= 0; i--) {
      const k = roundHalfEven(y[i]! / (s * R(i, i)));
      codes[r * cols + i] = k;
      for (let j = 0; j <= i; j++) y[j]! -= k * s * R(j, i);
    }
  }
  return codes;
}
