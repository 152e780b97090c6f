import { bf16IntoFloat, halfIntoFloat } from '../io/fp16.js';
import type { Backend } from './backend.js';

/**
 * A [rows, cols] table as the checkpoint stores it: float32, or 16-bit (IEEE half or bfloat16 bits) widened to
 * float32 a slice of rows at a time where it is read. The embedding and the LM head are such tables: a
 * 128256 x 4096 vocabulary is 1 GB as stored, 2.1 GB widened.
 */
export interface StoredRows {
  dtype: 'F32' | 'F16' | 'BF16';
  data: Float32Array | Uint16Array;
}

export const floatRows = (data: Float32Array): StoredRows => ({ dtype: 'F32', data });

/** Rows r0..r1 of a table widened into out[at..) (exact: every 16-bit value is a float32). */
export function widenRowsInto(w: StoredRows, r0: number, r1: number, cols: number, out: Float32Array, at = 0): void {
  const src = w.data.subarray(r0 * cols, r1 * cols);
  if (w.dtype === 'F32') out.set(src, at);
  else if (w.dtype === 'F16') halfIntoFloat(src as Uint16Array, out, at);
  else bf16IntoFloat(src as Uint16Array, out, at);
}

/** Rows r0..r1 as float32: a view of a float32 table (no copy), else widened into `scratch` (or a new array). */
export function rowsF32(w: StoredRows, r0: number, r1: number, cols: number, scratch?: Float32Array): Float32Array {
  if (w.dtype === 'F32') return (w.data as Float32Array).subarray(r0 * cols, r1 * cols);
  const n = (r1 - r0) * cols;
  const out = scratch && scratch.length >= n ? scratch.subarray(0, n) : new Float32Array(n);
  widenRowsInto(w, r0, r1, cols, out);
  return out;
}

/**
 * Floats one vocabulary slice may widen or produce: 2^24 (64 MB), so an LM head is never float32 whole and a
 * window's logits [m, vocab] are never formed at once (eval of a 128256-row head: 32 slices of 4096 rows).
 */
export const SLICE_FLOATS = 2 ** 24;

/**
 * Runs fn over the rows of one or more [vocab, cols] tables (a model's head and a reference's) in slices, each
 * handed over as float32: rows per slice bounded so the widened slice (cols floats a row, 16-bit tables only) and
 * the m rows of outputs it feeds (m floats a row) each stay within sliceFloats. Slices run one after another and
 * reuse one scratch buffer per table.
 */
export async function forVocabSlices(
  tables: StoredRows[],
  vocab: number,
  cols: number,
  m: number,
  fn: (slices: Float32Array[], r0: number, r1: number) => Promise<void>,
  sliceFloats = SLICE_FLOATS,
): Promise<void> {
  const perRow = Math.max(m, tables.some((t) => t.dtype !== 'F32') ? cols : 0);
  const step = Math.max(1, Math.floor(sliceFloats / perRow));
  const scratch = tables.map((t) => (t.dtype === 'F32' ? undefined : new Float32Array(Math.min(step, vocab) * cols)));
  for (let r0 = 0; r0 < vocab; r0 += step) {
    const r1 = Math.min(vocab, r0 + step);
    await fn(
      tables.map((t, i) => rowsF32(t, r0, r1, cols, scratch[i])),
      r0,
      r1,
    );
  }
}

/** log(e^a + e^b) in float64, for joining the log-sum-exps of slices. */
export function logAddExp(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const hi = Math.max(a, b);
  return hi + Math.log(Math.exp(a - hi) + Math.exp(b - hi));
}

/**
 * Logits [m, vocab] = h[m, d] · Wᵀ for a stored head, one vocabulary slice at a time (a 16-bit head is widened a
 * slice at a time; a float32 one is read in place).
 */
export async function headLogits(
  backend: Pick<Backend, 'matmulNT'>,
  h: Float32Array,
  w: StoredRows,
  m: number,
  d: number,
  vocab: number,
): Promise<Float32Array> {
  const out = new Float32Array(m * vocab);
  await forVocabSlices([w], vocab, d, m, async ([slice], r0, r1) => {
    const n = r1 - r0;
    const y = await backend.matmulNT(h, slice!, m, n, d);
    if (n === vocab) out.set(y);
    else for (let i = 0; i < m; i++) out.set(y.subarray(i * n, (i + 1) * n), i * vocab + r0);
  });
  return out;
}

/** Typed arrays of one kind, end to end (row slices computed apart, as one). */
export function concatArrays<T extends Float32Array | Int32Array | Uint8Array>(parts: readonly T[]): T {
  const out = new (parts[0]!.constructor as new (n: number) => T)(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
