import { halfToFloat } from '../io/fp16.js';
import { MATVEC16_WASM } from './matvec16-wasm.js';
import type { StoredRows } from './rows.js';
import { PoolFunction, poolWidth } from './wasm-pool.js';

/**
 * Generation's LM head straight from its 16-bit storage (bfloat16 or IEEE half), for the one position a step
 * needs. onnxruntime's CPU kernels have no 16-bit matmul, so before this the head was widened to float32 once:
 * twice the bytes to hold (2.1 GB for Llama 3's 128256 x 4096) and to read on every token. Here the table is
 * copied into a shared WebAssembly memory, and the main thread and the helpers of wasm-pool.ts each run the SIMD kernel of scripts/build-wasm.mjs over a share of its rows. Float32 arithmetic, four partial
 * sums of four lanes a row: test/head16.test.ts bounds it against the float64 dot product of the widened rows.
 */
export interface Head16 {
  /** the table, now a view of the shared memory (the caller drops its own copy) */
  readonly table: StoredRows;
  /** logits [rows] for one final hidden state [cols] */
  logits(h: Float32Array): Float32Array;
  /** which of the wasm kernels runs it */
  readonly kernel: KernelName;
}

/** a step of the kernel covers 16 columns */
const STEP = 16;
const PAGE = 65536;
/** wasm32's 4 GiB, less room for x and y */
const MAX_TABLE_BYTES = 2 ** 32 - 2 ** 26;

/** Whether a table can run on the 16-bit kernel (16-bit, whole steps of columns, within one wasm memory). */
export function head16Fits(w: StoredRows, rows: number, cols: number): boolean {
  return w.dtype !== 'F32' && cols % STEP === 0 && rows * cols * 2 <= MAX_TABLE_BYTES;
}

let compiled: WebAssembly.Module | undefined;
const kernelModule = (): WebAssembly.Module => (compiled ??= new WebAssembly.Module(Buffer.from(MATVEC16_WASM, 'base64')));

/** the kernel's export: bf16, or for IEEE half f16 (exact) or f16r (rebiased, with the correction below) */
export type KernelName = 'bf16' | 'f16' | 'f16r';

/**
 * Above this fraction of halves with exponent 0 the exact f16 kernel runs instead of f16r: each such half costs the
 * correction a term (a table of N(0, 0.02) weights has 0.24% of them).
 */
const MAX_CORRECTED = 1 / 128;

/**
 * What f16r gets wrong, row by row: a half with exponent 0 and mantissa m (value ±m·2^-24) comes out of the integer
 * rebias as ±(1 + m/1024)·2^-15, so each such weight's term is off by (value − that)·x. Listed as CSR (row starts,
 * columns, the differences), or undefined when there are too many for the rebiased kernel to pay.
 */
interface Correction {
  start: Int32Array;
  col: Int32Array;
  delta: Float64Array;
}

function halfCorrection(t: Uint16Array, rows: number, cols: number): Correction | undefined {
  // one pass over pairs of halves (the table starts the wasm memory, so it is 4-byte aligned): 0.63 s for a 128256 x
  // 4096 head, whose opening took 1.5-2.3 s longer with a count pass and a fill pass over single halves
  const at = new Uint32Array(Math.floor(t.length * MAX_CORRECTED));
  const pairs = new Uint32Array(t.buffer, t.byteOffset, t.length >>> 1);
  let n = 0;
  for (let p = 0; p < pairs.length; p++) {
    const w = pairs[p]!;
    if ((w & 0x7c00) !== 0 && (w & 0x7c000000) !== 0) continue;
    for (let i = 2 * p; i < 2 * p + 2; i++) {
      if ((t[i]! & 0x7c00) !== 0) continue;
      if (n === at.length) return undefined;
      at[n++] = i;
    }
  }
  const c: Correction = { start: new Int32Array(rows + 1), col: new Int32Array(n), delta: new Float64Array(n) };
  for (let k = 0; k < n; k++) {
    const [h, r] = [t[at[k]!]!, Math.floor(at[k]! / cols)];
    const misread = (h & 0x8000 ? -1 : 1) * (1 + (h & 0x3ff) / 1024) * 2 ** -15;
    c.col[k] = at[k]! - r * cols;
    c.delta[k] = halfToFloat(h) - misread;
    c.start[r + 1] = k + 1;
  }
  // rows without any such half start where the row before them ends
  for (let r = 1; r <= rows; r++) c.start[r] = Math.max(c.start[r]!, c.start[r - 1]!);
  return c;
}

/** The head's table moved into shared memory, with its kernel on this thread and on each helper. */
export function openHead16(w: StoredRows, rows: number, cols: number): Head16 {
  if (!head16Fits(w, rows, cols)) throw new RangeError(`a ${w.dtype} ${rows} x ${cols} table does not fit the 16-bit head kernel`);
  const W = 0;
  const X = rows * cols * 2;
  const Y = X + cols * 4;
  const pages = Math.ceil((Y + rows * 4) / PAGE);
  const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
  const table = new Uint16Array(memory.buffer, W, rows * cols);
  table.set(w.data as Uint16Array);
  const x = new Float32Array(memory.buffer, X, cols);
  const y = new Float32Array(memory.buffer, Y, rows);
  const correction = w.dtype === 'F16' ? halfCorrection(table, rows, cols) : undefined;
  const fn: KernelName = w.dtype === 'F16' ? (correction ? 'f16r' : 'f16') : 'bf16';
  const kernel = new PoolFunction(kernelModule(), memory, fn);
  const threads = poolWidth();
  const share = Math.ceil(rows / threads);
  const head: Head16 = {
    table: { dtype: w.dtype, data: table },
    kernel: fn,
    logits(h) {
      // each run of 8 as [0 2 4 6 1 3 5 7], the order the kernel's lanes take the weights in
      for (let b = 0; b < cols; b += 8) for (let i = 0; i < 4; i++) [x[b + i], x[b + 4 + i]] = [h[b + 2 * i]!, h[b + 2 * i + 1]!];
      kernel.run(Array.from({ length: threads }, (_, i) => [W, X, Y, Math.min(rows, i * share), Math.min(rows, (i + 1) * share), cols]));
      const out = y.slice();
      if (correction) {
        const { start, col, delta } = correction;
        for (let r = 0; r < rows; r++) {
          let d = 0;
          for (let k = start[r]!; k < start[r + 1]!; k++) d += delta[k]! * h[col[k]!]!;
          if (d !== 0) out[r] = out[r]! + d;
        }
      }
      return out;
    },
  };
  return head;
}
