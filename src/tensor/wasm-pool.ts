import { availableParallelism } from 'node:os';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';

/**
 * The process's helper threads for the WebAssembly matvec kernels (head16.ts, matvec4.ts): a batch-1 matvec is
 * bound by memory bandwidth, which one core does not saturate, so each call splits its rows between this thread
 * and a helper per other core (8 threads in all at most). A kernel's memory is shared; a call passes each helper
 * its arguments through a few shared control words and waits for it, with no message on the way (a message round
 * trip costs more than a small layer's product).
 */

/*
 * Control words a helper shares with the main thread: SEQ counts requests (−1: exit), DONE the last one finished;
 * the rest are the request: which function, and its arguments. Functions arrive on a MessagePort, read
 * synchronously when a request names one the helper has not seen (a helper blocked in Atomics.wait runs no events).
 */
const ANSWER_MS = 30_000;
const SEQ = 0;
const DONE = 1;
const ID = 2;
const ARGS = 3;
const MAX_ARGS = 13;
const WORKER = `
const { workerData, receiveMessageOnPort } = require('node:worker_threads');
const { control, port } = workerData;
const c = new Int32Array(control);
const fns = new Map();
for (let seen = 0; ; ) {
  Atomics.wait(c, ${SEQ}, seen);
  seen = Atomics.load(c, ${SEQ});
  if (seen < 0) break;
  for (let m; !fns.has(c[${ID}]) && (m = receiveMessageOnPort(port)); ) {
    const { id, module, memory, fn, forget } = m.message;
    if (forget) fns.delete(id);
    else fns.set(id, new WebAssembly.Instance(module, { env: { memory } }).exports[fn]);
  }
  fns.get(c[${ID}])(...c.subarray(${ARGS}, ${ARGS + MAX_ARGS}));
  Atomics.store(c, ${DONE}, seen);
  Atomics.notify(c, ${DONE});
}
`;

interface Helper {
  control: Int32Array;
  port: MessagePort;
  seq: number;
}

const MAX_THREADS = 8;

/** The helpers, started on first use; unreferenced, so they never keep the process alive. */
let helpers: Helper[] | undefined;
function helperThreads(): Helper[] {
  return (helpers ??= Array.from({ length: Math.min(availableParallelism(), MAX_THREADS) - 1 }, () => {
    const control = new Int32Array(new SharedArrayBuffer((ARGS + MAX_ARGS) * 4));
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(WORKER, {
      eval: true,
      // no loaders or relaunch hooks: the helper's code is plain JavaScript
      execArgv: [],
      workerData: { control: control.buffer, port: port2 },
      transferList: [port2],
    });
    worker.unref();
    port1.unref();
    return { control, port: port1, seq: 0 };
  }));
}

/** Threads a call can split its work over: this one and the helpers. */
export const poolWidth = (): number => helperThreads().length + 1;

type WasmFunction = (...args: number[]) => void;

let nextId = 1;
/** a collected function's instances are dropped from the helpers' maps (they hold its memory) */
const forgotten = new FinalizationRegistry((id: number) => forget(id));
function forget(id: number): void {
  for (const h of helpers ?? []) h.port.postMessage({ id, forget: true });
}

/** An exported function of a module over a shared memory, instantiated on this thread and on every helper. */
export class PoolFunction {
  private readonly id = nextId++;
  private readonly local: WasmFunction;
  private disposed = false;

  constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, fn: string) {
    this.local = new WebAssembly.Instance(module, { env: { memory } }).exports[fn] as WasmFunction;
    for (const h of helperThreads()) h.port.postMessage({ id: this.id, module, memory, fn });
    forgotten.register(this, this.id, this);
  }

  /**
   * One call split over threads: shares[0] runs here, shares[i] on helper i − 1, all at once; returns when all
   * are done. At most poolWidth() shares, each at most 13 arguments.
   */
  run(shares: number[][]): void {
    const pool = helperThreads();
    if (shares.length > pool.length + 1) throw new RangeError(`${shares.length} shares for ${pool.length + 1} threads`);
    const busy = pool.slice(0, shares.length - 1);
    busy.forEach((p, i) => {
      const c = p.control;
      c[ID] = this.id;
      c.set(shares[i + 1]!, ARGS);
      Atomics.store(c, SEQ, ++p.seq);
      Atomics.notify(c, SEQ);
    });
    this.local(...shares[0]!);
    for (const p of busy) {
      for (let d; (d = Atomics.load(p.control, DONE)) !== p.seq;) {
        // a helper that failed to start would leave this thread waiting for good
        if (Atomics.wait(p.control, DONE, d, ANSWER_MS) === 'timed-out')
          throw new Error(`a WebAssembly helper thread did not answer in ${ANSWER_MS / 1000} s`);
      }
    }
  }

  /** drop the helpers' instances now (they would be dropped when this object is collected) */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    forgotten.unregister(this);
    forget(this.id);
  }
}
