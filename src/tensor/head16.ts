import { availableParallelism } from 'node:os';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { halfToFloat } from '../io/fp16.js';
import { MATVEC16_WASM } from './matvec16-wasm.js';
import type { StoredRows } from './rows.js';

/**
 * Generation's LM head straight from its 16-bit storage (bfloat16 or IEEE half), for the one position a step
 * needs. onnxruntime's CPU kernels have no 16-bit matmul, so before this the head was widened to float32 once:
 * twice the bytes to hold (2.1 GB for Llama 3's 128256 x 4096) and to read on every token. Here the table is
 * copied into a shared WebAssembly memory, and the main thread and a helper per other core (8 threads at most)
 * each run the SIMD kernel of scripts/build-wasm.mjs over a share of its rows. Float32 arithmetic, four partial
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

type Kernel = (w: number, x: number, y: number, r0: number, r1: number, cols: number) => void;
/** the kernel's export: bf16, or for IEEE half f16 (exact) or f16r (rebiased, with the correction below) */
export type KernelName = 'bf16' | 'f16' | 'f16r';
const kernelOf = (memory: WebAssembly.Memory, fn: KernelName): Kernel =>
  new WebAssembly.Instance(kernelModule(), { env: { memory } }).exports[fn] as Kernel;

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

/*
 * Control words a worker shares with the main thread: SEQ counts requests (−1: exit), DONE the last one finished;
 * the rest are the request: which table, and the kernel's arguments. Tables arrive on a MessagePort, read
 * synchronously when a request names one the worker has not seen (a worker blocked in Atomics.wait runs no events).
 */
const ANSWER_MS = 30_000;
const SEQ = 0;
const DONE = 1;
const ID = 2;
const ARGS = 3;
const WORKER = `
const { workerData, receiveMessageOnPort } = require('node:worker_threads');
const { module, control, port } = workerData;
const c = new Int32Array(control);
const kernels = new Map();
for (let seen = 0; ; ) {
  Atomics.wait(c, ${SEQ}, seen);
  seen = Atomics.load(c, ${SEQ});
  if (seen < 0) break;
  for (let m; !kernels.has(c[${ID}]) && (m = receiveMessageOnPort(port)); ) {
    const { id, memory, fn, forget } = m.message;
    if (forget) kernels.delete(id);
    else kernels.set(id, new WebAssembly.Instance(module, { env: { memory } }).exports[fn]);
  }
  kernels.get(c[${ID}])(c[${ARGS}], c[${ARGS + 1}], c[${ARGS + 2}], c[${ARGS + 3}], c[${ARGS + 4}], c[${ARGS + 5}]);
  Atomics.store(c, ${DONE}, seen);
  Atomics.notify(c, ${DONE});
}
`;

interface Helper {
  control: Int32Array;
  port: MessagePort;
  seq: number;
}

/** a matvec is bound by memory bandwidth, which a few cores already saturate */
const MAX_THREADS = 8;

/** The process's helper threads, started on first use; unreferenced, so they never keep the process alive. */
let helpers: Helper[] | undefined;
function helperThreads(): Helper[] {
  return (helpers ??= Array.from({ length: Math.min(availableParallelism(), MAX_THREADS) - 1 }, () => {
    const control = new Int32Array(new SharedArrayBuffer(16 * 4));
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(WORKER, {
      eval: true,
      // no loaders or relaunch hooks: the worker's code is plain JavaScript
      execArgv: [],
      workerData: { module: kernelModule(), control: control.buffer, port: port2 },
      transferList: [port2],
    });
    worker.unref();
    port1.unref();
    return { control, port: port1, seq: 0 };
  }));
}

let nextId = 1;
/** a collected head's kernel instances are dropped from the workers' maps (they hold its memory) */
const forget = new FinalizationRegistry((id: number) => {
  for (const h of helpers ?? []) h.port.postMessage({ id, forget: true });
});

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
  const run = kernelOf(memory, fn);
  const id = nextId++;
  const pool = helperThreads();
  for (const h of pool) h.port.postMessage({ id, memory, fn });
  const share = Math.ceil(rows / (pool.length + 1));
  const head: Head16 = {
    table: { dtype: w.dtype, data: table },
    kernel: fn,
    logits(h) {
      // each run of 8 as [0 2 4 6 1 3 5 7], the order the kernel's lanes take the weights in
      for (let b = 0; b < cols; b += 8) for (let i = 0; i < 4; i++) [x[b + i], x[b + 4 + i]] = [h[b + 2 * i]!, h[b + 2 * i + 1]!];
      pool.forEach((p, i) => {
        const c = p.control;
        c[ID] = id;
        c.set([W, X, Y, Math.min(rows, (i + 1) * share), Math.min(rows, (i + 2) * share), cols], ARGS);
        Atomics.store(c, SEQ, ++p.seq);
        Atomics.notify(c, SEQ);
      });
      run(W, X, Y, 0, Math.min(rows, share), cols);
      for (const p of pool) {
        for (let d; (d = Atomics.load(p.control, DONE)) !== p.seq;) {
          // a worker that failed to start would leave this thread waiting for good
          if (Atomics.wait(p.control, DONE, d, ANSWER_MS) === 'timed-out')
            throw new Error(`the head's helper thread did not answer in ${ANSWER_MS / 1000} s`);
        }
      }
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
  forget.register(head, id);
  return head;
}
