/**
 * Dense float64 factorizations for GPTQ (row-major n×n). Plain TypeScript: each routine is its own definition.
 */

/** Lower Cholesky factor L with A = L·Lᵀ, or undefined when A is not (numerically) positive definite. */
export function cholesky(a: Float64Array, n: number): Float64Array | undefined {
  const l = new Float64Array(n * n);
  for (let j = 0; j < n; j++) {
    const rj = j * n;
    let s = a[rj + j]!;
    for (let k = 0; k < j; k++) s -= l[rj + k]! * l[rj + k]!;
    if (!(s > 0)) return undefined;
    const d = Math.sqrt(s);
    l[rj + j] = d;
    for (let i = j + 1; i < n; i++) {
      const ri = i * n;
      let t = a[ri + j]!;
      for (let k = 0; k < j; k++) t -= l[ri + k]! * l[rj + k]!;
      l[ri + j] = t / d;
    }
  }
  return l;
}

/**
 * Inverse of a lower-triangular matrix, row by row: (L⁻¹)[i][j] = −(Σ_{k=j}^{i−1} L[i][k]·(L⁻¹)[k][j]) / L[i][i],
 * accumulated as axpys over the contiguous rows of L⁻¹ already computed.
 */
export function invertLower(l: Float64Array, n: number): Float64Array {
  const inv = new Float64Array(n * n);
  const acc = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    acc.fill(0, 0, i);
    for (let k = 0; k < i; k++) {
      const a = l[ri + k]!;
      if (a === 0) continue;
      const rk = k * n;
      for (let j = 0; j <= k; j++) acc[j]! += a * inv[rk + j]!;
    }
    const d = l[ri + i]!;
    for (let j = 0; j < i; j++) inv[ri + j] = -acc[j]! / d;
    inv[ri + i] = 1 / d;
  }
  return inv;
}

/**
 * The upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ·U), as GPTQ needs it, without forming H⁻¹: with J the
 * order-reversing permutation and J·H·J = L·Lᵀ, H⁻¹ = (J·L⁻¹·J)ᵀ·(J·L⁻¹·J) and J·L⁻¹·J is upper triangular
 * with a positive diagonal, so it is U. One factorization and one triangular inverse instead of three
 * factorizations. Undefined when H is not positive definite.
 */
export function upperCholeskyOfInverse(h: Float64Array, n: number): Float64Array | undefined {
  // J·A·J of a row-major matrix is its flat array reversed
  const l = cholesky(h.slice().reverse(), n);
  return l && invertLower(l, n).reverse();
}

/** The backend's float64 gemm: C[m,n] = A[m,k]·Bᵀ with B [n,k] (transB) or A·B with B [k,n]. */
export type Gemm64 = (a: Float64Array, b: Float64Array, m: number, n: number, k: number, transB: boolean) => Promise<Float64Array>;

/** At or below this size the blocked routine falls through to the plain ones above. */
const BLOCK = 128;

/** Rows r0..r1, columns c0..c1 of a row-major matrix with n columns, as a dense block. */
function block(a: Float64Array, n: number, r0: number, r1: number, c0: number, c1: number): Float64Array {
  const out = new Float64Array((r1 - r0) * (c1 - c0));
  for (let i = r0; i < r1; i++) out.set(a.subarray(i * n + c0, i * n + c1), (i - r0) * (c1 - c0));
  return out;
}

function putBlock(a: Float64Array, n: number, b: Float64Array, r0: number, c0: number, cols: number): void {
  for (let i = 0; i < b.length / cols; i++) a.set(b.subarray(i * cols, (i + 1) * cols), (r0 + i) * n + c0);
}

/** Where the blocked routines split n: about half, on a multiple of BLOCK. */
const half = (n: number): number => Math.ceil(n / 2 / BLOCK) * BLOCK;

/*
 * Products with a lower-triangular or symmetric operand, recursively by halves: each splits into two products
 * of the same kind on the diagonal halves and one plain gemm on the off-diagonal block, so the zero (or
 * mirrored) half is never multiplied. At 2·BLOCK and below a plain gemm does it, trading a small product's
 * wasted half for fewer calls.
 */

/** A·Xᵀ, A [m, n], X [n, n] lower triangular: [A1·X11ᵀ | A1·X21ᵀ + A2·X22ᵀ] */
async function timesLowerT(a: Float64Array, x: Float64Array, m: number, n: number, gemm: Gemm64): Promise<Float64Array> {
  if (n <= 2 * BLOCK) return gemm(a, x, m, n, n, true);
  const q = half(n);
  const a1 = block(a, n, 0, m, 0, q);
  const left = await timesLowerT(a1, block(x, n, 0, q, 0, q), m, q, gemm);
  const right = addTo(
    await timesLowerT(block(a, n, 0, m, q, n), block(x, n, q, n, q, n), m, n - q, gemm),
    await gemm(a1, block(x, n, q, n, 0, q), m, n - q, q, true),
  );
  return columns(left, right, m, q, n - q);
}

/** A·X, A [m, n], X [n, n] lower triangular: [A1·X11 + A2·X21 | A2·X22] */
async function timesLower(a: Float64Array, x: Float64Array, m: number, n: number, gemm: Gemm64): Promise<Float64Array> {
  if (n <= 2 * BLOCK) return gemm(a, x, m, n, n, false);
  const q = half(n);
  const a2 = block(a, n, 0, m, q, n);
  const left = addTo(
    await timesLower(block(a, n, 0, m, 0, q), block(x, n, 0, q, 0, q), m, q, gemm),
    await gemm(a2, block(x, n, q, n, 0, q), m, q, n - q, false),
  );
  return columns(left, await timesLower(a2, block(x, n, q, n, q, n), m, n - q, gemm), m, q, n - q);
}

/** X·B, X [m, m] lower triangular, B [m, k]: [X11·B1; X21·B1 + X22·B2] */
async function lowerTimes(x: Float64Array, b: Float64Array, m: number, k: number, gemm: Gemm64): Promise<Float64Array> {
  if (m <= 2 * BLOCK) return gemm(x, b, m, k, m, false);
  const q = half(m);
  const b1 = b.subarray(0, q * k);
  const out = new Float64Array(m * k);
  out.set(await lowerTimes(block(x, m, 0, q, 0, q), b1, q, k, gemm));
  const bottom = await lowerTimes(block(x, m, q, m, q, m), b.subarray(q * k), m - q, k, gemm);
  out.set(addTo(bottom, await gemm(block(x, m, q, m, 0, q), b1, m - q, k, q, false)), q * k);
  return out;
}

/** The lower triangle of L·Lᵀ, L [m, k]: [[L1·L1ᵀ, ·], [L2·L1ᵀ, L2·L2ᵀ]] (what lies above the diagonal is not defined) */
async function lowerOfGram(l: Float64Array, m: number, k: number, gemm: Gemm64): Promise<Float64Array> {
  if (m <= 2 * BLOCK) return gemm(l, l, m, m, k, true);
  const q = half(m);
  const [l1, l2] = [l.subarray(0, q * k), l.subarray(q * k)];
  const out = new Float64Array(m * m);
  putBlock(out, m, await lowerOfGram(l1, q, k, gemm), 0, 0, q);
  putBlock(out, m, await gemm(l2, l1, m - q, q, k, true), q, 0, q);
  putBlock(out, m, await lowerOfGram(l2, m - q, k, gemm), q, q, m - q);
  return out;
}

function addTo(a: Float64Array, b: Float64Array): Float64Array {
  for (let i = 0; i < a.length; i++) a[i]! += b[i]!;
  return a;
}

/** [L | R] of L [m, p] and R [m, q] */
function columns(l: Float64Array, r: Float64Array, m: number, p: number, q: number): Float64Array {
  const out = new Float64Array(m * (p + q));
  putBlock(out, p + q, l, 0, 0, p);
  putBlock(out, p + q, r, 0, p, q);
  return out;
}

/**
 * The inverse L⁻¹ of A's Cholesky factor, recursively by halves so that almost all flops are large gemms:
 * with A = [[A11, ·], [A21, A22]] and L11 = chol(A11),
 *   L21 = A21·L11⁻ᵀ,  L22 = chol(A22 − L21·L21ᵀ),  L⁻¹ = [[L11⁻¹, 0], [−L22⁻¹·L21·L11⁻¹, L22⁻¹]]
 * (L itself is never assembled). Blocks of at most BLOCK columns use the plain routines above. Reads only the
 * lower triangle of A. Undefined when A is not positive definite.
 */
export async function blockedCholeskyInverse(a: Float64Array, n: number, gemm: Gemm64): Promise<Float64Array | undefined> {
  if (n <= BLOCK) {
    const l = cholesky(a, n);
    return l && invertLower(l, n);
  }
  const h = half(n);
  const m = n - h;
  const topInv = await blockedCholeskyInverse(block(a, n, 0, h, 0, h), h, gemm);
  if (!topInv) return undefined;
  const l21 = await timesLowerT(block(a, n, h, n, 0, h), topInv, m, h, gemm);
  const a22 = await lowerOfGram(l21, m, h, gemm);
  // A22 − L21·L21ᵀ, into the product's buffer (fresh memory is slow to touch; reuse what exists)
  for (let i = 0; i < m; i++) {
    const row = (h + i) * n + h;
    for (let j = 0; j <= i; j++) a22[i * m + j] = a[row + j]! - a22[i * m + j]!;
  }
  const bottomInv = await blockedCholeskyInverse(a22, m, gemm);
  if (!bottomInv) return undefined;
  const x21 = await lowerTimes(bottomInv, await timesLower(l21, topInv, m, h, gemm), m, h, gemm);
  const inv = new Float64Array(n * n);
  putBlock(inv, n, topInv, 0, 0, h);
  for (let i = 0; i < m; i++) {
    const row = (h + i) * n;
    for (let j = 0; j < h; j++) inv[row + j] = -x21[i * h + j]!;
  }
  putBlock(inv, n, bottomInv, h, h, m);
  return inv;
}

/**
 * upperCholeskyOfInverse with the blocked routine (same identity, gemm-bound). Reverses `h` in place, sparing a
 * copy of an n×n matrix (fresh memory is slow to touch on some VMs: ~3 µs per page here), and writes nothing else
 * into it: reversing it again restores it.
 */
export async function upperCholeskyOfInverseBlocked(h: Float64Array, n: number, gemm: Gemm64): Promise<Float64Array | undefined> {
  const inv = await blockedCholeskyInverse(h.reverse(), n, gemm);
  return inv?.reverse();
}
