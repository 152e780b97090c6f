import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fail, shown } from './errors.js';
import { bf16ArrayToFloat, halfArrayToFloat } from './fp16.js';
import { writeAtomically, yieldToSignals } from './atomic.js';

export type DType = 'F32' | 'F16' | 'BF16' | 'I32' | 'I8' | 'U8' | 'F64' | 'I64';

const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I8: 1, U8: 1, F64: 8, I64: 8 };

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** absolute byte offset in the file */
  offset: number;
  byteLength: number;
  file: string;
}

export type TypedArray = Float32Array | Float64Array | Int32Array | Int8Array | Uint8Array | Uint16Array | BigInt64Array;

/** A tensor in memory: raw typed data in its stored dtype (F16/BF16 as Uint16Array bits). */
export interface RawTensor {
  dtype: DType;
  shape: number[];
  data: TypedArray;
}

const MAX_HEADER = 100 * 1024 * 1024;

/** Lazy reader of one .safetensors file: parses the header, reads each tensor on demand by offset. */
export class SafetensorsFile {
  readonly tensors = new Map<string, TensorInfo>();
  readonly metadata: Record<string, string> = {};
  private fd: number;

  constructor(readonly path: string) {
    if (!existsSync(path)) fail(`${path}: file not found`);
    this.fd = openSync(path, 'r');
    const size = fstatSync(this.fd).size;
    if (size < 8) fail(`${path}: truncated safetensors file (${size} bytes, no header)`);
    const lenBuf = Buffer.alloc(8);
    readSync(this.fd, lenBuf, 0, 8, 0);
    const headerLen = Number(lenBuf.readBigUInt64LE(0));
    if (headerLen > MAX_HEADER || 8 + headerLen > size) {
      fail(`${path}: corrupt safetensors header length ${headerLen} (file is ${size} bytes)`);
    }
    const headerBuf = Buffer.alloc(headerLen);
    readSync(this.fd, headerBuf, 0, headerLen, 8);
    let header: unknown;
    try {
      header = JSON.parse(headerBuf.toString('utf8'));
    } catch {
      fail(`${path}: safetensors header is not valid JSON`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) fail(`${path}: safetensors header is not a JSON object`);
    const dataStart = 8 + headerLen;
    const spans: [begin: number, end: number, name: string][] = [];
    for (const [name, entry] of Object.entries(header)) {
      if (name === '__metadata__') {
        if (
          typeof entry !== 'object' ||
          entry === null ||
          Array.isArray(entry) ||
          Object.values(entry).some((v) => typeof v !== 'string')
        ) {
          fail(`${path}: __metadata__ must map strings to strings`);
        }
        Object.assign(this.metadata, entry);
        continue;
      }
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry))
        fail(`${path}: tensor ${name} has no dtype/shape/data_offsets entry`);
      const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const dtype = e.dtype as DType;
      // own keys only: "toString" or "__proto__" are not dtypes
      if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, dtype))
        fail(`${path}: tensor ${name} has unsupported dtype ${shown(e.dtype)}`);
      const shape = e.shape;
      const offsets = e.data_offsets;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
        fail(`${path}: tensor ${name} has an invalid shape ${shown(shape)}`);
      }
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isInteger(o) && o >= 0)) {
        fail(`${path}: tensor ${name} has invalid data_offsets`);
      }
      const [begin, end] = offsets as [number, number];
      const numel = (shape as number[]).reduce((a, b) => a * b, 1);
      const byteLength = numel * DTYPE_BYTES[dtype];
      if (end - begin !== byteLength) {
        fail(`${path}: tensor ${name} header says ${end - begin} bytes but ${dtype}${shown(shape)} needs ${byteLength}`);
      }
      if (dataStart + end > size) {
        fail(`${path}: tensor ${name} extends past the end of the file (truncated? needs ${dataStart + end} bytes, file has ${size})`);
      }
      this.tensors.set(name, { name, dtype, shape: shape as number[], offset: dataStart + begin, byteLength, file: path });
      spans.push([begin, end, name]);
    }
    // as the format (and the safetensors library's validation) requires: the tensors tile the data region
    // exactly, in offset order, with no gap and no overlap, so no tensor reads another's bytes or stray ones
    spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let covered = 0;
    for (const [begin, end, name] of spans) {
      if (begin !== covered) {
        fail(
          begin < covered
            ? `${path}: tensor ${name} data_offsets [${begin}, ${end}] overlap the previous tensor's bytes (which end at ${covered})`
            : `${path}: tensor ${name} starts at byte ${begin} but the previous tensor ends at ${covered}: a gap in the data region`,
        );
      }
      covered = end;
    }
    if (covered !== size - dataStart) {
      fail(
        `${path}: the tensors cover ${covered} bytes of data but the file holds ${size - dataStart} after the header (wrong header length, or extra bytes)`,
      );
    }
  }

  read(name: string): RawTensor {
    const info = this.tensors.get(name);
    if (!info) fail(`${this.path}: no tensor named ${name}`);
    const buf = new ArrayBuffer(info.byteLength);
    const view = new Uint8Array(buf);
    let done = 0;
    while (done < info.byteLength) {
      const n = readSync(this.fd, view, done, info.byteLength - done, info.offset + done);
      if (n === 0) fail(`${this.path}: unexpected end of file reading ${name}`);
      done += n;
    }
    return { dtype: info.dtype, shape: info.shape, data: typedView(info.dtype, buf) };
  }

  close(): void {
    closeSync(this.fd);
  }
}

function typedView(dtype: DType, buf: ArrayBuffer): TypedArray {
  switch (dtype) {
    case 'F32':
      return new Float32Array(buf);
    case 'F64':
      return new Float64Array(buf);
    case 'F16':
    case 'BF16':
      return new Uint16Array(buf);
    case 'I32':
      return new Int32Array(buf);
    case 'I64':
      return new BigInt64Array(buf);
    case 'I8':
      return new Int8Array(buf);
    case 'U8':
      return new Uint8Array(buf);
  }
}

/** Any floating tensor as float32. */
export function toFloat32(t: RawTensor, what: string): Float32Array {
  switch (t.dtype) {
    case 'F32':
      return t.data as Float32Array;
    case 'F16':
      return halfArrayToFloat(t.data as Uint16Array);
    case 'BF16':
      return bf16ArrayToFloat(t.data as Uint16Array);
    case 'F64':
      return Float32Array.from(t.data as Float64Array);
    default:
      fail(`${what}: expected a floating-point tensor, got ${t.dtype}`);
  }
}

/**
 * All tensors of a model directory: model.safetensors, or the shards listed in model.safetensors.index.json.
 * Opening reads only headers; tensor data is read when asked for.
 */
export class SafetensorsModel {
  private files = new Map<string, SafetensorsFile>();
  private where = new Map<string, SafetensorsFile>();

  constructor(readonly dir: string) {
    const index = join(dir, 'model.safetensors.index.json');
    const single = join(dir, 'model.safetensors');
    if (existsSync(index)) {
      let weightMap: Record<string, string>;
      try {
        weightMap = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map;
      } catch {
        fail(`${index}: not a valid safetensors index (JSON with weight_map)`);
      }
      if (!weightMap || typeof weightMap !== 'object') fail(`${index}: missing weight_map`);
      for (const [name, shard] of Object.entries(weightMap)) {
        const file = this.open(join(dir, shard));
        if (!file.tensors.has(name)) fail(`${join(dir, shard)}: index lists tensor ${name} but the shard lacks it`);
        this.where.set(name, file);
      }
    } else if (existsSync(single)) {
      const file = this.open(single);
      for (const name of file.tensors.keys()) this.where.set(name, file);
    } else if (existsSync(join(dir, 'pytorch_model.bin')) || existsSync(join(dir, 'pytorch_model.bin.index.json'))) {
      // a pickle: loading one runs code from the file, and needs PyTorch's format besides
      fail(
        `${dir}: only pytorch_model.bin (PyTorch pickle) weights; gptq-ts reads safetensors: convert once in Python with model.save_pretrained(dir, safe_serialization=True)`,
      );
    } else {
      fail(`${dir}: no model.safetensors or model.safetensors.index.json`);
    }
  }

  private open(path: string): SafetensorsFile {
    let f = this.files.get(path);
    if (!f) {
      f = new SafetensorsFile(path);
      this.files.set(path, f);
    }
    return f;
  }

  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  info(name: string): TensorInfo {
    const f = this.where.get(name);
    if (!f) fail(`${this.dir}: missing tensor ${name}`);
    return f.tensors.get(name)!;
  }

  read(name: string): RawTensor {
    const f = this.where.get(name);
    if (!f) fail(`${this.dir}: missing tensor ${name}`);
    return f.read(name);
  }

  /** Read a floating tensor as float32, checking its shape. */
  readFloat(name: string, shape: number[]): Float32Array {
    const info = this.info(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      fail(`${info.file}: tensor ${name} has shape [${info.shape}] but the config implies [${shape}]`);
    }
    const data = toFloat32(this.read(name), `${info.file}: tensor ${name}`);
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i]!)) fail(`${info.file}: tensor ${name} contains NaN/Inf at element ${i}`);
    }
    return data;
  }

  close(): void {
    for (const f of this.files.values()) f.close();
  }
}

/**
 * What the model loaders read tensors through: a safetensors directory, or another file format presented under the
 * checkpoint's own tensor names (a GGUF, models/gguf-import.ts).
 */
export type TensorReader = Pick<SafetensorsModel, 'dir' | 'names' | 'has' | 'info' | 'read' | 'readFloat' | 'close'>;

export interface TensorToWrite {
  dtype: DType;
  shape: number[];
  /** the data, or what makes it when its turn to be written comes, so that such tensors are in memory one at a time */
  data: TypedArray | (() => TypedArray);
}

/** A tensor's size in bytes, from its dtype and shape (known before lazy data is made). */
export function tensorBytes(t: Pick<TensorToWrite, 'dtype' | 'shape'>): number {
  return t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
}

/** Write tensors (in the given order) to one safetensors file, atomically. */
export async function writeSafetensors(
  path: string,
  tensors: Map<string, TensorToWrite>,
  metadata: Record<string, string> = { format: 'pt' },
): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, t] of tensors) {
    const bytes = tensorBytes(t);
    if (typeof t.data !== 'function') checkBytes(name, t, t.data);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  // pad so tensor data starts 8-byte aligned, as the reference writer does
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(headerBytes.length));
  await writeAtomically(path, async (tmp) => {
    const fd = openSync(tmp, 'wx');
    try {
      await writeAll(fd, len);
      await writeAll(fd, headerBytes);
      for (const [name, t] of tensors) {
        const data = typeof t.data === 'function' ? checkBytes(name, t, t.data()) : t.data;
        await writeAll(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      }
    } finally {
      closeSync(fd);
    }
  });
}

function checkBytes(name: string, t: TensorToWrite, data: TypedArray): TypedArray {
  const bytes = tensorBytes(t);
  if (data.byteLength !== bytes)
    throw new Error(`writeSafetensors: ${name} has ${data.byteLength} bytes, ${t.dtype}[${t.shape}] needs ${bytes}`);
  return data;
}

const WRITE_SLICE = 16 << 20;

/** Write all of `bytes`, letting signal handlers run between slices so an interrupt stops a long write promptly. */
export async function writeAll(fd: number, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) {
    done += writeSync(fd, bytes, done, Math.min(WRITE_SLICE, bytes.length - done));
    await yieldToSignals();
  }
}
