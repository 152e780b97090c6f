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

function reverseBoth(a: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[(n - 1 - i) * n + (n - 1 - j)] = a[i * n + j]!;
  return out;
}

/**
 * The upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ·U), as GPTQ needs it, without forming H⁻¹: with J the
 * order-reversing permutation and J·H·J = L·Lᵀ, H⁻¹ = (J·L⁻¹·J)ᵀ·(J·L⁻¹·J) and J·L⁻¹·J is upper triangular
 * with a positive diagonal, so it is U. One factorization and one triangular inverse instead of three
 * factorizations. Undefined when H is not positive definite.
 */
export function upperCholeskyOfInverse(h: Float64Array, n: number): Float64Array | undefined {
  const l = cholesky(reverseBoth(h, n), n);
  return l && reverseBoth(invertLower(l, n), n);
}

/** C[m,n] = A[m,k]·B[n,k]ᵀ in float64 (the backend's; plain loops in the reference). */
export type Gemm64 = (a: Float64Array, b: Float64Array, m: number, n: number, k: number) => Promise<Float64Array>;

/** Below this size the blocked routines fall through to the plain ones above. */
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

/**
 * Right-looking blocked Cholesky: per panel of BLOCK columns, factor the diagonal block with the plain routine,
 * solve the panel below it as L21 = A21·L11⁻ᵀ, and update the trailing matrix A22 −= L21·L21ᵀ. Both products
 * are gemms (almost all of the n³/3 flops), so they run at the backend's speed.
 */
export async function blockedCholesky(a: Float64Array, n: number, gemm: Gemm64): Promise<Float64Array | undefined> {
  if (n <= BLOCK) return cholesky(a, n);
  const w = Float64Array.from(a); // trailing matrix, updated in place
  const l = new Float64Array(n * n);
  for (let k = 0; k < n; k += BLOCK) {
    const e = Math.min(k + BLOCK, n);
    const nb = e - k;
    const l11 = cholesky(block(w, n, k, e, k, e), nb);
    if (!l11) return undefined;
    putBlock(l, n, l11, k, k, nb);
    if (e === n) break;
    const m = n - e;
    // L21 = A21·(L11⁻¹)ᵀ: as A·Bᵀ with B = L11⁻¹
    const l21 = await gemm(block(w, n, e, n, k, e), invertLower(l11, nb), m, nb, nb);
    putBlock(l, n, l21, e, k, nb);
    const update = await gemm(l21, l21, m, m, nb);
    for (let i = 0; i < m; i++) {
      const row = (e + i) * n + e;
      // only the lower triangle is read later
      for (let j = 0; j <= i; j++) w[row + j]! -= update[i * m + j]!;
    }
  }
  return l;
}

/**
 * Blocked inverse of a lower-triangular matrix by halves: [[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [−C⁻¹·B·A⁻¹, C⁻¹]],
 * the off-diagonal block as two gemms.
 */
export async function blockedInvertLower(l: Float64Array, n: number, gemm: Gemm64): Promise<Float64Array> {
  if (n <= BLOCK) return invertLower(l, n);
  const h = Math.ceil(n / 2 / BLOCK) * BLOCK;
  const m = n - h;
  const [ai, ci] = await Promise.all([
    blockedInvertLower(block(l, n, 0, h, 0, h), h, gemm),
    blockedInvertLower(block(l, n, h, n, h, n), m, gemm),
  ]);
  // B·A⁻¹ = B·(A⁻¹ᵀ)ᵀ, then C⁻¹·(B·A⁻¹) = C⁻¹·((B·A⁻¹)ᵀ)ᵀ
  const bai = await gemm(block(l, n, h, n, 0, h), transpose(ai, h, h), m, h, h);
  const x21 = await gemm(ci, transpose(bai, m, h), m, h, m);
  const out = new Float64Array(n * n);
  putBlock(out, n, ai, 0, 0, h);
  putBlock(out, n, ci, h, h, m);
  for (let i = 0; i < x21.length; i++) x21[i] = -x21[i]!;
  putBlock(out, n, x21, h, 0, h);
  return out;
}

function transpose(a: Float64Array, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j]!;
  return t;
}

/** upperCholeskyOfInverse with the blocked routines (same identity, gemm-bound). */
export async function upperCholeskyOfInverseBlocked(h: Float64Array, n: number, gemm: Gemm64): Promise<Float64Array | undefined> {
  const l = await blockedCholesky(reverseBoth(h, n), n, gemm);
  return l && reverseBoth(await blockedInvertLower(l, n, gemm), n);
}
