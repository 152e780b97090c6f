import { createHash } from 'node:crypto';
import {
  closeSync,
  constants,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  read,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  write,
} from 'node:fs';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { alive } from '../io/atomic.js';
import { fail } from '../io/errors.js';
import { SafetensorsFile, writeSafetensors, type DType, type SafetensorsModel, type TensorToWrite } from '../io/safetensors.js';

const writeAsync = promisify(write);
const readAsync = promisify(read);

/**
 * What a quantization run keeps on disk: the calibration hidden states at the current block's input and output
 * (float32, exactly what an in-memory run would hold, so a model's calibration set costs disk, not memory), the
 * quantized layers of finished blocks, and which blocks are finished. A resumable run's directory survives the
 * process; a later run with the same model, settings and calibration windows continues after the last finished
 * block and computes exactly what an uninterrupted run would have.
 */

/**
 * Rows of float32 values in a file, read and written by row ranges (one calibration chunk at a time).
 *
 * Writes go behind: `write` starts one on libuv's thread pool and returns once the file's previous write is done,
 * so the next chunk's products run while this one's rows reach the page cache. At a 7-8B model's calibration set
 * the files outgrow the kernel's dirty-page limit and each write waits for the disk (here 117 MB writes took
 * 240-270 ms against 20-40 ms below the limit); a write-behind spends that wait computing. A written array must
 * not change until the next call on its file; `read`, `sync` and `close` wait for the writes before them, and a
 * failed write fails the next call.
 */
export class RowFile {
  private fd: number;
  private readonly rowBytes: number;
  private pending: Promise<void> = Promise.resolve();
  private ahead?: { first: number; rows: number; data: Promise<Float32Array> };
  /** reads in flight, without their data (a range read ahead and dropped is not kept for them) */
  private readonly reading = new Set<Promise<void>>();

  constructor(
    readonly path: string,
    readonly width: number,
    mode: 'create' | 'open' | 'reuse',
  ) {
    // 'reuse' keeps what the file holds (a block's scratch rows, written before they are read): overwriting pages a
    // file already has ran 4-5x faster here than extending a truncated one (720 MB: 84-90 ms against 402)
    this.fd = openSync(path, mode === 'create' ? 'w+' : mode === 'open' ? 'r+' : constants.O_RDWR | constants.O_CREAT);
    this.rowBytes = width * 4;
  }

  /**
   * Rows [first, first + rows). The calibration reads each file front to back a chunk at a time, so every read
   * also starts the next range's, on libuv's thread pool: the copy out of the page cache (or the disk) runs while
   * this chunk is computed on. A write that overlaps a range read ahead drops it.
   */
  async read(first: number, rows: number): Promise<Float32Array> {
    const ahead = this.ahead;
    const data = ahead && ahead.first === first && ahead.rows === rows ? ahead.data : this.readRange(first, rows);
    this.ahead = { first: first + rows, rows, data: this.readRange(first + rows, rows) };
    // past the file's end (the last chunk's next) it fails, and is only reported if those rows are asked for
    this.ahead.data.catch(() => {});
    return data;
  }

  private readRange(first: number, rows: number): Promise<Float32Array> {
    const range = async (): Promise<Float32Array> => {
      await this.pending;
      const out = new Float32Array(rows * this.width);
      const bytes = new Uint8Array(out.buffer);
      for (let done = 0; done < bytes.length;) {
        const { bytesRead } = await readAsync(this.fd, bytes, done, bytes.length - done, first * this.rowBytes + done);
        if (bytesRead === 0) throw new Error(`${this.path}: ends before row ${first + rows}`);
        done += bytesRead;
      }
      return out;
    };
    const data = range();
    // the file stays open until every read issued on it has finished
    const settled = data.then(
      () => {},
      () => {},
    );
    this.reading.add(settled);
    void settled.then(() => this.reading.delete(settled));
    return data;
  }

  async write(first: number, data: Float32Array): Promise<void> {
    const [ahead, end] = [this.ahead, first + data.length / this.width];
    if (ahead && first < ahead.first + ahead.rows && ahead.first < end) this.ahead = undefined;
    await this.pending;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const at = first * this.rowBytes;
    const writeAll = async (): Promise<void> => {
      for (let done = 0; done < bytes.length;)
        done += (await writeAsync(this.fd, bytes, done, bytes.length - done, at + done)).bytesWritten;
    };
    // a full or failing disk is the user's to fix: one line naming the file, no stack trace
    this.pending = writeAll().catch((e: unknown) =>
      fail(`${this.path}: writing rows from ${first}: ${e instanceof Error ? e.message : String(e)}`),
    );
    // the failure is reported by the next call on the file; until then it is not an unhandled rejection
    this.pending.catch(() => {});
  }

  /** on disk before a block is recorded as finished, so a crash of the machine cannot leave a finished block with lost rows */
  async sync(): Promise<void> {
    await this.pending;
    fsyncSync(this.fd);
  }

  /** waits for the writes (their failure is thrown after the file is closed) */
  async close(): Promise<void> {
    try {
      await this.pending;
    } finally {
      this.ahead = undefined;
      await Promise.all(this.reading);
      closeSync(this.fd);
    }
  }
}

type LayerArray = Float32Array | Int32Array | Uint8Array;
type StoredLayer = Record<string, number | boolean | LayerArray>;

function dtypeOf(a: LayerArray): DType {
  if (a instanceof Float32Array) return 'F32';
  if (a instanceof Int32Array) return 'I32';
  return 'U8';
}

/** One block's layers in one safetensors file: each array a tensor `NAME:FIELD`, the scalar fields in the metadata. */
async function saveLayers(path: string, layers: [string, object][]): Promise<void> {
  const tensors = new Map<string, TensorToWrite>();
  const scalars: Record<string, Record<string, number | boolean>> = {};
  for (const [name, layer] of layers) {
    scalars[name] = {};
    for (const [field, v] of Object.entries(layer as StoredLayer)) {
      if (typeof v === 'number' || typeof v === 'boolean') scalars[name][field] = v;
      else tensors.set(`${name}:${field}`, { dtype: dtypeOf(v), shape: [v.length], data: v });
    }
  }
  await writeSafetensors(path, tensors, { layers: JSON.stringify(scalars) });
}

function loadLayer<T>(path: string, name: string): T {
  const f = new SafetensorsFile(path);
  try {
    const layer: StoredLayer = { ...(JSON.parse(f.metadata['layers']!) as Record<string, StoredLayer>)[name] };
    for (const t of f.tensors.keys()) if (t.startsWith(`${name}:`)) layer[t.slice(name.length + 1)] = f.read(t).data as LayerArray;
    return layer as T;
  } finally {
    f.close();
  }
}

/**
 * Layers by tensor name, in the order they were added. With a directory, each finished block's layers move to a
 * file there and are read back one at a time when asked for, so a whole model's codes are never in memory at once.
 */
export class LayerStore<T extends object> implements ReadonlyMap<string, T> {
  private readonly order: string[] = [];
  private readonly memory = new Map<string, T>();
  private readonly files = new Map<string, string>();

  set(name: string, layer: T): void {
    if (!this.has(name)) this.order.push(name);
    this.memory.set(name, layer);
  }

  /** Write the named layers to `path` and drop them from memory. */
  async spill(path: string, names: string[]): Promise<void> {
    await saveLayers(
      path,
      names.map((n) => [n, this.memory.get(n)!]),
    );
    this.adopt(path, names);
  }

  /** Layers a file already holds (a resumed run's finished blocks). */
  adopt(path: string, names: string[]): void {
    for (const n of names) {
      if (!this.has(n)) this.order.push(n);
      this.memory.delete(n);
      this.files.set(n, path);
    }
  }

  get(name: string): T | undefined {
    const file = this.files.get(name);
    return file ? loadLayer<T>(file, name) : this.memory.get(name);
  }

  has(name: string): boolean {
    return this.memory.has(name) || this.files.has(name);
  }

  get size(): number {
    return this.order.length;
  }

  *keys(): MapIterator<string> {
    yield* this.order;
  }

  *values(): MapIterator<T> {
    for (const n of this.order) yield this.get(n)!;
  }

  *entries(): MapIterator<[string, T]> {
    for (const n of this.order) yield [n, this.get(n)!];
  }

  [Symbol.iterator](): MapIterator<[string, T]> {
    return this.entries();
  }

  forEach(fn: (value: T, key: string, map: ReadonlyMap<string, T>) => void): void {
    for (const [n, v] of this) fn(v, n, this);
  }
}

/** Seconds spent computing the calibration forward, accumulating Hessians and sweeping (factorizations included) */
export interface StageSeconds {
  forward: number;
  hessian: number;
  sweep: number;
  total: number;
}

/** What a finished block left: its layers' reports and the time it took. */
export interface FinishedBlock<R> {
  reports: R[];
  seconds: StageSeconds;
}

const STATE_VERSION = 1;

/**
 * The state directory of one run. `identity` is everything the result depends on; a resumed run must match it
 * exactly (a different model, setting or calibration set would silently give a different model), and is refused
 * naming the first difference.
 */
export class RunState<R> {
  readonly finished: FinishedBlock<R>[] = [];
  private readonly lock: string;

  constructor(
    readonly dir: string,
    identity: Record<string, unknown>,
    resume: boolean,
  ) {
    const runFile = join(dir, 'run.json');
    this.lock = join(dir, 'lock');
    const stated: Record<string, unknown> = { version: STATE_VERSION, ...identity };
    if (resume && existsSync(runFile)) {
      const owner = existsSync(this.lock) ? Number(readFileSync(this.lock, 'utf8')) : 0;
      if (owner && owner !== process.pid && alive(owner)) fail(`${dir}: another run (process ${owner}) is using this state`);
      const before = JSON.parse(readFileSync(runFile, 'utf8')) as Record<string, unknown>;
      for (const key of new Set([...Object.keys(stated), ...Object.keys(before)])) {
        const [was, now] = [JSON.stringify(before[key]), JSON.stringify(stated[key])];
        if (was !== now) {
          fail(`${dir}: the interrupted run had ${key} ${was}, this one ${now}; resume with the same model and settings, or delete ${dir}`);
        }
      }
      const progress = join(dir, 'progress.json');
      if (existsSync(progress)) this.finished.push(...(JSON.parse(readFileSync(progress, 'utf8')) as FinishedBlock<R>[]));
    } else {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      writeFileSync(runFile, JSON.stringify(stated, null, 1));
    }
    writeFileSync(this.lock, String(process.pid));
  }

  /** Hidden states entering block l, stream s (GPTQv2's second stream is the full-precision model's). */
  hiddenPath(l: number, s: number): string {
    return join(this.dir, `hidden-${s}-${l}.f32`);
  }

  /** A block's intermediate rows for one stream (o_proj's or down_proj's inputs): each block rewrites them before reading. */
  scratchPath(kind: 'attention' | 'activation', s: number): string {
    return join(this.dir, `${kind}-${s}.f32`);
  }

  /** The scratch rows' file, its pages overwritten block after block (RowFile's 'reuse'). */
  scratch(kind: 'attention' | 'activation', s: number, width: number): RowFile {
    return new RowFile(this.scratchPath(kind, s), width, 'reuse');
  }

  /** A finished block's input for stream s, kept for the output of the block after next (see newHidden). */
  private sparePath(s: number): string {
    return join(this.dir, `hidden-${s}-spare.f32`);
  }

  layersPath(l: number): string {
    return join(this.dir, `block-${l}.safetensors`);
  }

  /** Record block l as finished (its layers and output rows already on disk) and drop what resuming no longer needs. */
  finish(l: number, block: FinishedBlock<R>): void {
    this.finished.push(block);
    const progress = join(this.dir, 'progress.json');
    writeFileSync(`${progress}.new`, JSON.stringify(this.finished));
    renameSync(`${progress}.new`, progress);
    for (const f of readdirSync(this.dir)) {
      const m = /^hidden-(\d+)-(\d+)\.f32$/.exec(f);
      if (!m || Number(m[2]) > l) continue;
      if (Number(m[2]) === l) renameSync(join(this.dir, f), this.sparePath(Number(m[1])));
      else rmSync(join(this.dir, f), { force: true });
    }
  }

  /**
   * The file for the hidden states entering block l, stream s, to be written whole: the spare a finished block
   * left when there is one, its pages overwritten rather than a file extended (RowFile's 'reuse').
   */
  newHidden(l: number, s: number, width: number): RowFile {
    const spare = this.sparePath(s);
    if (existsSync(spare)) renameSync(spare, this.hiddenPath(l, s));
    return new RowFile(this.hiddenPath(l, s), width, 'reuse');
  }

  /** The run is done: drop the last hidden states, the spare and the blocks' scratch files. */
  dropRows(layers: number, streams: number): void {
    for (let s = 0; s < streams; s++) {
      for (const f of [this.hiddenPath(layers, s), this.sparePath(s), this.scratchPath('attention', s), this.scratchPath('activation', s)])
        rmSync(f, { force: true });
    }
  }

  release(): void {
    rmSync(this.lock, { force: true });
  }
}

/**
 * A model directory as a resumed run must find it again: config.json and each weight file's name, size and
 * modification time (hashing many GB of weights would cost minutes; a file rewritten in place changes its mtime).
 */
export function modelFingerprint(dir: string, st: SafetensorsModel): Record<string, unknown> {
  const files = [...new Set(st.names().map((n) => st.info(n).file))].sort();
  return {
    config: createHash('sha256')
      .update(readFileSync(join(dir, 'config.json')))
      .digest('hex'),
    files: files.map((f) => {
      const s = statSync(f);
      return [basename(f), s.size, s.mtimeMs];
    }),
  };
}

/** sha256 of a typed array's bytes: names a calibration set in a run's identity without storing it. */
export function digest(a: Int32Array): string {
  return createHash('sha256')
    .update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength))
    .digest('hex');
}
