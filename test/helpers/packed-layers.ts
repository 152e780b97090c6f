import assert from 'node:assert/strict';
import { seededRandom } from '../../src/calib/windows.js';
import { floatToHalf, halfToFloat } from '../../src/io/fp16.js';
import { dequantize, numGroups, type QuantizedLayer } from '../../src/quant/quantized-layer.js';
import type { ActivationPrecision } from '../../src/tensor/backend.js';
import { nbitsLayout } from '../../src/tensor/ort-linear.js';
import { matmulNT } from '../../src/tensor/ref.js';

/*
 * Packed kernels against dequantize-then-matmul. Tolerances:
 * - the plain-TS packed definition accumulates in float64: equal to the float64 product of the dequantized
 *   matrix up to 1e-6 relative;
 * - onnxruntime with float32 activations: float32 accumulation over K terms, |err| <= 4·K·2⁻²⁴·Σ_c|W_rc·x_c|;
 * - with int8 activations each block of x is rounded to 1/254 of its largest magnitude, so
 *   |err| <= Σ_c |W_rc|·max|x_block(c)|/254 (+ the float32 term).
 */

export function randomLayer(rows: number, cols: number, bits: number, groupSize: number, actOrder: boolean, seed: number): QuantizedLayer {
  const rnd = seededRandom(seed);
  const q: Pick<QuantizedLayer, 'cols' | 'groupSize'> = { cols, groupSize };
  const G = numGroups(q);
  const maxq = (1 << bits) - 1;
  const perm = Array.from({ length: cols }, (_, c) => c);
  for (let i = cols - 1; actOrder && i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  const gIdx = new Int32Array(cols);
  perm.forEach((c, i) => (gIdx[c] = groupSize > 0 ? Math.floor(i / groupSize) : 0));
  return {
    rows,
    cols,
    bits,
    groupSize,
    sym: false,
    codes: Uint8Array.from({ length: rows * cols }, () => Math.floor(rnd() * (maxq + 1))),
    // scales as a checkpoint holds them: fp16 values
    scales: Float32Array.from({ length: rows * G }, () => halfToFloat(floatToHalf(0.001 + rnd() * 0.05))),
    zeros: Int32Array.from({ length: rows * G }, () => Math.floor(rnd() * (maxq + 1))),
    gIdx,
  };
}

export function check(
  q: QuantizedLayer,
  m: number,
  activations: ActivationPrecision,
  got: Float32Array,
  x: Float32Array,
  what: string,
): void {
  const w = dequantize(q);
  const want = matmulNT(x, w, m, q.rows, q.cols);
  const blockSize = nbitsLayout(q.gIdx)?.blockSize ?? q.cols;
  const order = Array.from(q.gIdx, (_, c) => c).sort((a, b) => q.gIdx[a]! - q.gIdx[b]! || a - b);
  for (let i = 0; i < m; i++) {
    // largest |x| of the int8 block each column falls in, in the kernel's column order
    const blockMax = new Float64Array(q.cols);
    for (let b = 0; b < q.cols; b += blockSize) {
      const cs = order.slice(b, b + blockSize);
      const mx = Math.max(...cs.map((c) => Math.abs(x[i * q.cols + c]!)));
      for (const c of cs) blockMax[c] = mx;
    }
    for (let r = 0; r < q.rows; r++) {
      let absSum = 0;
      let int8 = 0;
      for (let c = 0; c < q.cols; c++) {
        const wc = Math.abs(w[r * q.cols + c]!);
        absSum += wc * Math.abs(x[i * q.cols + c]!);
        int8 += (wc * blockMax[c]!) / 254;
      }
      const tol = 4 * q.cols * 2 ** -24 * absSum + (activations === 'int8' ? int8 : 0) + 1e-12;
      const err = Math.abs(got[i * q.rows + r]! - want[i * q.rows + r]!);
      assert.ok(err <= tol, `${what}: y[${i},${r}] = ${got[i * q.rows + r]} vs ${want[i * q.rows + r]} (err ${err}, tol ${tol})`);
    }
  }
}
