import type { Gemm64Options } from './backend.js';

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

/** The backend's float64 gemm (Backend.matmul64): C[m,n] = A·Bᵀ with B [n,k] (transB) or A·B with B [k,n]. */
export type Gemm64 = (
  a: Float64Array,
  b: Float64Array,
  m: number,
  n: number,
  k: number,
  transB: boolean,
  more?: Gemm64Options,
) => Promise<Float64Array>;

/** At or below this size the plain routines above factor a matrix. */
const LEAF = 64;
/** Rows per panel of the blocked routine: the small dimension of its gemms. */
const PANEL = 256;
/** A quarter of n, on a multiple of 8, between LEAF and PANEL: diagonal blocks recurse with smaller panels. */
const panelWidth = (n: number): number => Math.min(PANEL, Math.max(LEAF, Math.ceil(n / 32) * 8));

const EMPTY = new Float64Array(0);

/**
 * Rows r0..r1, columns c0..c1 of a row-major n×n matrix, or (reversed) of J·A·J, as a dense block. J·A·J is A's
 * flat array reversed: its row i is A's row n−1−i backwards.
 */
function block(
  a: Float64Array,
  n: number,
  r0: number,
  r1: number,
  c0: number,
  c1: number,
  reversed = false,
  out = new Float64Array((r1 - r0) * (c1 - c0)),
): Float64Array {
  const w = c1 - c0;
  for (let i = r0; i < r1; i++) {
    const row = out.subarray((i - r0) * w, (i - r0 + 1) * w);
    if (!reversed) {
      row.set(a.subarray(i * n + c0, i * n + c1));
    } else {
      row.set(a.subarray((n - i) * n - c1, (n - i) * n - c0));
      row.reverse();
    }
  }
  return out;
}

/**
 * The inverse L⁻¹ of A's Cholesky factor (A = L·Lᵀ), a panel of rows at a time, so that almost all flops are
 * gemms whose operands are contiguous as they are kept: besides A's own blocks nothing is copied to be
 * multiplied, and each product is written where it belongs. With J the rows of a panel and s its first row,
 * from A = L·Lᵀ and L·L⁻¹ = I:
 *   Y = L[J, :s]ᵀ = L⁻¹[:s, :s]·A[J, :s]ᵀ,  L[J, J] = chol(A[J, J] − Yᵀ·Y),
 *   L⁻¹[J, J] = L[J, J]⁻¹,  L⁻¹[J, :s] = −L⁻¹[J, J]·Yᵀ·L⁻¹[:s, :s]
 * (2n³/3 flop, as the unblocked routines, plus 2n²·w for panels of w rows). L⁻¹ is kept twice while it grows: as
 * row panels L⁻¹[J, :end of J], whose products with a prefix of rows give Y a panel of rows at a time, and as
 * column panels L⁻¹[s.., J], whose transposed products with a suffix of Y's rows give (Yᵀ·L⁻¹[:s, :s])ᵀ a panel
 * of rows at a time. The diagonal block recurses with narrower panels down to LEAF. A must be symmetric: both of
 * its triangles are read. Undefined when A is not positive definite.
 * With `reversed`, A is read as J·a·J and J·L⁻¹·J is returned (J reversing the order: see
 * upperCholeskyOfInverse); diagonal blocks, made fresh, recurse unreversed.
 */
export async function blockedCholeskyInverse(
  a: Float64Array,
  n: number,
  gemm: Gemm64,
  reversed = false,
): Promise<Float64Array | undefined> {
  if (n <= LEAF) {
    if (reversed) return upperCholeskyOfInverse(a, n);
    const l = cholesky(a, n);
    return l && invertLower(l, n);
  }
  const w = panelWidth(n);
  const rowPanels: Float64Array[] = [];
  const colPanels: Float64Array[] = [];
  // each panel's [s, w] intermediates, made once: fresh memory costs more to touch than these products take
  const [atAll, yAll, ztAll, leftAll] = Array.from({ length: 4 }, () => new Float64Array(n * w));
  for (let s = 0; s < n; s += w) {
    const e = Math.min(s + w, n);
    const b = e - s;
    const d = block(a, n, s, e, s, e, reversed);
    let y: Float64Array | undefined;
    if (s > 0) {
      // A[J, :s]ᵀ is A[:s, J], A being symmetric
      const at = block(a, n, 0, s, s, e, reversed, atAll!.subarray(0, s * b));
      y = yAll!.subarray(0, s * b);
      for (let i = 0, r = 0; r < s; r += w, i++)
        await gemm(rowPanels[i]!, at.subarray(0, (r + w) * b), w, b, r + w, false, { out: y.subarray(r * b, (r + w) * b) });
      const g = await gemm(y, y, b, b, s, false, { transA: true });
      // kept exactly symmetric, as the recursion reads both triangles
      for (let i = 0; i < b; i++) for (let j = 0; j <= i; j++) d[i * b + j] = d[j * b + i] = d[i * b + j]! - g[i * b + j]!;
    }
    const inv = await blockedCholeskyInverse(d, b, gemm);
    if (!inv) return undefined;
    const row = new Float64Array(b * e);
    for (let i = 0; i < b; i++) row.set(inv.subarray(i * b, (i + 1) * b), i * e + s);
    if (y) {
      const zt = ztAll!.subarray(0, s * b);
      for (let i = 0, r = 0; r < s; r += w, i++) {
        await gemm(colPanels[i]!.subarray(0, (s - r) * w), y.subarray(r * b), w, b, s - r, false, {
          transA: true,
          out: zt.subarray(r * b, (r + w) * b),
        });
      }
      // −L⁻¹[J, J]·Yᵀ·L⁻¹[:s, :s] = L⁻¹[J, :s]
      const left = await gemm(
        inv.map((v) => -v),
        zt,
        b,
        s,
        b,
        true,
        { out: leftAll!.subarray(0, b * s) },
      );
      for (let k = 0; k < b; k++) row.set(left.subarray(k * s, (k + 1) * s), k * e);
      for (let i = 0, r = 0; r < s; r += w, i++) {
        for (let k = 0; k < b; k++) colPanels[i]!.set(row.subarray(k * e + r, k * e + r + w), (s - r + k) * w);
      }
    }
    const col = new Float64Array((n - s) * b);
    col.set(inv);
    rowPanels.push(row);
    colPanels.push(col);
  }
  colPanels.length = 0;
  const out = new Float64Array(n * n);
  for (let i = 0, s = 0; s < n; s += w, i++) {
    const [p, e] = [rowPanels[i]!, Math.min(s + w, n)];
    for (let k = 0; k < e - s; k++) {
      const src = p.subarray(k * e, (k + 1) * e);
      if (!reversed) {
        out.set(src, (s + k) * n);
      } else {
        // row n−1−(s+k) of J·L⁻¹·J is row s+k of L⁻¹ backwards, in its last e columns
        const dst = out.subarray((n - s - k) * n - e, (n - s - k) * n);
        dst.set(src);
        dst.reverse();
      }
    }
    rowPanels[i] = EMPTY;
  }
  return out;
}

/**
 * upperCholeskyOfInverse with the blocked routine (same identity, gemm-bound). Reads J·h·J from h as it stands
 * and writes J·L⁻¹·J directly, so h is left as it was and no n×n matrix is reversed or copied (fresh memory is
 * slow to touch on some VMs: ~3 µs per page here).
 */
export async function upperCholeskyOfInverseBlocked(h: Float64Array, n: number, gemm: Gemm64): Promise<Float64Array | undefined> {
  return blockedCholeskyInverse(h, n, gemm, true);
}
