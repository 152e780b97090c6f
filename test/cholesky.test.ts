import assert from 'node:assert/strict';
import { test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import {
  blockedCholeskyInverse,
  cholesky,
  invertLower,
  upperCholeskyOfInverse,
  upperCholeskyOfInverseBlocked,
} from '../src/tensor/cholesky.js';
import { ortBackend } from '../src/tensor/ort.js';
import { refBackend } from '../src/tensor/ref.js';

/*
 * The blocked (gemm-bound) factorizations against the plain float64 definitions, with both backends' float64
 * gemm, on sizes below, at and across the 64-column leaf, of several panels with a shorter last one (300: panels
 * of 80, the last 60) and where the diagonal blocks themselves take panels (700: panels of 176, their diagonal
 * blocks of 64). Tolerance 1e-9 relative to the largest entry: both are float64 and only the summation order differs.
 */

/** A Hessian-like SPD matrix: XᵀX/n of correlated columns plus a little damping. */
function spd(n: number, seed: number): Float64Array {
  const rnd = seededRandom(seed);
  const rows = n + 16;
  const x = Float64Array.from({ length: rows * n }, () => rnd() - 0.5);
  for (let r = 0; r < rows; r++) for (let c = 1; c < n; c++) x[r * n + c]! += 0.5 * x[r * n + c - 1]!;
  const h = new Float64Array(n * n);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < n; i++) {
      const xi = x[r * n + i]!;
      for (let j = 0; j < n; j++) h[i * n + j]! += (xi * x[r * n + j]!) / rows;
    }
  }
  for (let i = 0; i < n; i++) h[i * n + i]! += 0.01;
  return h;
}

function assertNear(got: Float64Array, want: Float64Array, what: string): void {
  const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-9 * scale, `${what}[${i}]: ${got[i]} vs ${want[i]}`);
}

for (const backend of [refBackend, ortBackend]) {
  test(`blocked Cholesky with its inverse, and U = chol(H⁻¹) equal the plain routines (${backend.name} gemm)`, async () => {
    const gemm = backend.matmul64.bind(backend);
    for (const n of backend === refBackend ? [1, 7, 65, 129, 300] : [1, 7, 64, 65, 128, 129, 300, 517, 700]) {
      const h = spd(n, n);
      const l = cholesky(h, n)!;
      assertNear((await blockedCholeskyInverse(h, n, gemm))!, invertLower(l, n), `inverse of the Cholesky factor n=${n}`);
      const before = h.slice();
      assertNear((await upperCholeskyOfInverseBlocked(h, n, gemm))!, upperCholeskyOfInverse(h, n)!, `U n=${n}`);
      assert.deepEqual(h, before, 'H is only read');
    }
  });
}

test('blocked Cholesky refuses a matrix that stops being positive definite after the first block', async () => {
  const n = 200;
  const h = spd(n, 3);
  h[150 * n + 150] = -1;
  assert.equal(cholesky(h, n), undefined);
  assert.equal(await blockedCholeskyInverse(h, n, ortBackend.matmul64.bind(ortBackend)), undefined);
});

test('float64 gemm (A·Bᵀ, A·B, Aᵀ·B, Aᵀ·Bᵀ, into a given output) equals the definition', async () => {
  const rnd = seededRandom(9);
  for (const [m, n, k] of [
    [1, 1, 1],
    [5, 3, 130],
    [129, 257, 64],
  ] as const) {
    const a = Float64Array.from({ length: m * k }, rnd);
    const b = Float64Array.from({ length: n * k }, rnd);
    for (const transB of [true, false]) {
      const want = await refBackend.matmul64(a, b, m, n, k, transB);
      assertNear(await ortBackend.matmul64(a, b, m, n, k, transB), want, `gemm ${m}x${n}x${k} transB=${transB}`);
      // A stored [k, m] and multiplied transposed, the product written into a view of a larger matrix
      const at = Float64Array.from({ length: m * k }, (_, i) => a[(i % m) * k + Math.floor(i / m)]!);
      for (const backend of [refBackend, ortBackend]) {
        const big = new Float64Array(m * n + 10).fill(7);
        const out = big.subarray(5, 5 + m * n);
        assert.equal(await backend.matmul64(at, b, m, n, k, transB, { transA: true, out }), out);
        assertNear(out, want, `${backend.name} gemm ${m}x${n}x${k} transA transB=${transB}`);
        assert.deepEqual([...big.subarray(0, 5), ...big.subarray(5 + m * n)], Array(10).fill(7), 'only the view is written');
      }
    }
  }
  // the definition itself: A·B with B [k,n] is A·(Bᵀ)ᵀ
  const a = Float64Array.from([1, 2, 3, 4, 5, 6]); // [2,3]
  const b = Float64Array.from([1, 0, 0, 1, 1, 1]); // [3,2]
  assert.deepEqual(Array.from(await refBackend.matmul64(a, b, 2, 2, 3, false)), [4, 5, 10, 11]);
});
