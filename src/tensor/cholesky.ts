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
