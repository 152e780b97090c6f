import { closeSync, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import { fail } from '../io/errors.js';
import { bf16ArrayToFloat, halfArrayToFloat } from '../io/fp16.js';
import { BLOCK_LAYOUTS, dequantizeRow, GGML_TYPES, unpackBlock, type BlockType } from './ggml-blocks.js';
import { packStream } from './gptq-pack.js';
import type { PackedLinearWeights } from '../tensor/index.js';

/**
 * A GGUF (v2/v3) reader: the header (metadata of every value type, tensor infos) is parsed and checked on open, and
 * each tensor is read from the file when asked for. The layout is llama.cpp's gguf.cpp: little-endian, u64 counts
 * and lengths, tensor offsets relative to the data section, which starts at the first multiple of
 * general.alignment (32 by default) after the header. A file that lies about itself (a length past its end, a
 * tensor outside the data or overlapping another, a type it does not say how to size) is refused on open, naming
 * the file and the key or tensor.
 */

const MAGIC = 0x46554747; // "GGUF"
const DEFAULT_ALIGNMENT = 32;

/** GGUF's metadata value types (gguf_type). */
export const GGUF_VALUE_TYPES = [
  'UINT8',
  'INT8',
  'UINT16',
  'INT16',
  'UINT32',
  'INT32',
  'FLOAT32',
  'BOOL',
  'STRING',
  'ARRAY',
  'UINT64',
  'INT64',
  'FLOAT64',
] as const;
export type GgufValueType = (typeof GGUF_VALUE_TYPES)[number];

export type GgufScalarValue = number | bigint | boolean | string;
export interface GgufMetaEntry {
  type: GgufValueType;
  /** ARRAY: its elements' type */
  elem?: GgufValueType;
  value: GgufScalarValue | GgufScalarValue[];
}

/**
 * Every ggml tensor type a GGUF may hold, with its block size and bytes per block (gguf-py's GGML_QUANT_SIZES), so
 * any file's layout can be checked and inspected; only some are dequantized (DEQUANTIZED below).
 */
export const GGML_TYPE_SIZES: Record<number, { name: string; block: number; bytes: number }> = {
  0: { name: 'F32', block: 1, bytes: 4 },
  1: { name: 'F16', block: 1, bytes: 2 },
  2: { name: 'Q4_0', block: 32, bytes: 18 },
  3: { name: 'Q4_1', block: 32, bytes: 20 },
  6: { name: 'Q5_0', block: 32, bytes: 22 },
  7: { name: 'Q5_1', block: 32, bytes: 24 },
  8: { name: 'Q8_0', block: 32, bytes: 34 },
  9: { name: 'Q8_1', block: 32, bytes: 40 },
  10: { name: 'Q2_K', block: 256, bytes: 84 },
  11: { name: 'Q3_K', block: 256, bytes: 110 },
  12: { name: 'Q4_K', block: 256, bytes: 144 },
  13: { name: 'Q5_K', block: 256, bytes: 176 },
  14: { name: 'Q6_K', block: 256, bytes: 210 },
  15: { name: 'Q8_K', block: 256, bytes: 292 },
  16: { name: 'IQ2_XXS', block: 256, bytes: 66 },
  17: { name: 'IQ2_XS', block: 256, bytes: 74 },
  18: { name: 'IQ3_XXS', block: 256, bytes: 98 },
  19: { name: 'IQ1_S', block: 256, bytes: 50 },
  20: { name: 'IQ4_NL', block: 32, bytes: 18 },
  21: { name: 'IQ3_S', block: 256, bytes: 110 },
  22: { name: 'IQ2_S', block: 256, bytes: 82 },
  23: { name: 'IQ4_XS', block: 256, bytes: 136 },
  24: { name: 'I8', block: 1, bytes: 1 },
  25: { name: 'I16', block: 1, bytes: 2 },
  26: { name: 'I32', block: 1, bytes: 4 },
  27: { name: 'I64', block: 1, bytes: 8 },
  28: { name: 'F64', block: 1, bytes: 8 },
  29: { name: 'IQ1_M', block: 256, bytes: 56 },
  30: { name: 'BF16', block: 1, bytes: 2 },
  34: { name: 'TQ1_0', block: 256, bytes: 54 },
  35: { name: 'TQ2_0', block: 256, bytes: 66 },
  39: { name: 'MXFP4', block: 32, bytes: 17 },
  40: { name: 'NVFP4', block: 64, bytes: 36 },
  41: { name: 'Q1_0', block: 128, bytes: 18 },
  42: { name: 'Q2_0', block: 64, bytes: 18 },
};

/** The types gptq-ts turns into float32: the float types and the block formats of ggml-blocks.ts. */
export const DEQUANTIZED = ['F32', 'F16', 'BF16', ...Object.keys(GGML_TYPES)] as const;

export interface GgufTensorInfo {
  name: string;
  /** ggml type id and name */
  type: number;
  typeName: string;
  /** row-major shape, outermost first (GGUF lists ne[] innermost first) */
  shape: number[];
  elements: number;
  /** absolute byte offset in the file, and length */
  offset: number;
  bytes: number;
}

/** strict UTF-8 that keeps a leading U+FEFF (a token may be one: Gemma's "\uFEFF#"); the default drops it */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A cursor over the file's header that reads more of the file as it goes (the header may be megabytes of vocabulary). */
class HeaderReader {
  private buf = Buffer.alloc(0);
  private start = 0;
  pos = 0;
  constructor(
    private readonly fd: number,
    private readonly size: number,
    private readonly path: string,
  ) {}

  private need(n: number, what: string): void {
    if (this.pos + n > this.size) fail(`${this.path}: truncated GGUF header (${what} runs past the end of the file, ${this.size} bytes)`);
    if (this.pos + n <= this.start + this.buf.length) return;
    const len = Math.min(this.size - this.pos, Math.max(n, 1 << 20));
    this.buf = Buffer.alloc(len);
    readSync(this.fd, this.buf, 0, len, this.pos);
    this.start = this.pos;
  }
  private at(n: number, what: string): number {
    this.need(n, what);
    const o = this.pos - this.start;
    this.pos += n;
    return o;
  }
  /** reads at the cursor (the buffer is the one `at` may just have refilled) */
  private get<T>(n: number, what: string, read: (b: Buffer, o: number) => T): T {
    const o = this.at(n, what);
    return read(this.buf, o);
  }
  u8(what: string): number {
    return this.get(1, what, (b, o) => b.readUInt8(o));
  }
  u32(what: string): number {
    return this.get(4, what, (b, o) => b.readUInt32LE(o));
  }
  u64(what: string): bigint {
    return this.get(8, what, (b, o) => b.readBigUInt64LE(o));
  }
  /** a u64 count or length, which must fit in the rest of the file at `unit` bytes each */
  count(what: string, unit: number): number {
    const n = this.u64(what);
    if (n * BigInt(unit) > BigInt(this.size - this.pos))
      fail(`${this.path}: ${what} is ${n}, more than the rest of the file could hold (truncated or corrupt GGUF)`);
    return Number(n);
  }
  string(what: string): string {
    const n = this.count(`the length of ${what}`, 1);
    const o = this.at(n, what);
    try {
      return UTF8.decode(this.buf.subarray(o, o + n));
    } catch {
      return fail(`${this.path}: ${what} is not valid UTF-8`);
    }
  }
  scalar(type: GgufValueType, what: string): GgufScalarValue {
    switch (type) {
      case 'UINT8':
        return this.get(1, what, (b, o) => b.readUInt8(o));
      case 'INT8':
        return this.get(1, what, (b, o) => b.readInt8(o));
      case 'UINT16':
        return this.get(2, what, (b, o) => b.readUInt16LE(o));
      case 'INT16':
        return this.get(2, what, (b, o) => b.readInt16LE(o));
      case 'UINT32':
        return this.get(4, what, (b, o) => b.readUInt32LE(o));
      case 'INT32':
        return this.get(4, what, (b, o) => b.readInt32LE(o));
      case 'FLOAT32':
        return this.get(4, what, (b, o) => b.readFloatLE(o));
      case 'BOOL': {
        const b = this.get(1, what, (b, o) => b.readUInt8(o));
        if (b > 1) fail(`${this.path}: ${what} is a BOOL of value ${b} (not 0 or 1)`);
        return b === 1;
      }
      case 'STRING':
        return this.string(what);
      case 'UINT64':
        return safe(this.get(8, what, (b, o) => b.readBigUInt64LE(o)));
      case 'INT64':
        return safe(this.get(8, what, (b, o) => b.readBigInt64LE(o)));
      case 'FLOAT64':
        return this.get(8, what, (b, o) => b.readDoubleLE(o));
      case 'ARRAY':
        return fail(`${this.path}: ${what} is an array of arrays, which no GGUF key holds`);
    }
  }
  valueType(what: string): GgufValueType {
    const t = this.u32(what);
    const name = GGUF_VALUE_TYPES[t];
    if (name === undefined) fail(`${this.path}: ${what} has unknown GGUF value type ${t}`);
    return name;
  }
}

/** 64-bit integers as numbers where exact, else as bigints. */
const safe = (v: bigint): number | bigint =>
  v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;

const MIN_BYTES: Partial<Record<GgufValueType, number>> = {
  UINT8: 1,
  INT8: 1,
  BOOL: 1,
  UINT16: 2,
  INT16: 2,
  UINT64: 8,
  INT64: 8,
  FLOAT64: 8,
  STRING: 8,
};

export class GgufFile {
  readonly version: number;
  readonly metadata = new Map<string, GgufMetaEntry>();
  readonly tensors = new Map<string, GgufTensorInfo>();
  readonly alignment: number;
  readonly size: number;
  private fd: number;

  constructor(readonly path: string) {
    if (!existsSync(path)) fail(`${path}: file not found`);
    this.fd = openSync(path, 'r');
    try {
      this.size = fstatSync(this.fd).size;
      const r = new HeaderReader(this.fd, this.size, path);
      if (this.size < 4 || r.u32('the magic') !== MAGIC) fail(`${path}: not a GGUF file (no "GGUF" magic)`);
      this.version = r.u32('the version');
      if (this.version !== 2 && this.version !== 3)
        fail(`${path}: GGUF version ${this.version} is not supported (2 and 3 are; version 1 used 32-bit counts)`);
      // every tensor info holds at least a name length, n_dims, a dimension, a type and an offset
      const nTensors = r.count('the tensor count', 8 + 4 + 8 + 4 + 8);
      const nKv = r.count('the metadata count', 8 + 4 + 1);
      for (let i = 0; i < nKv; i++) {
        const key = r.string(`metadata key ${i}`);
        if (this.metadata.has(key)) fail(`${path}: metadata key ${key} appears twice`);
        const type = r.valueType(`metadata ${key}`);
        if (type === 'ARRAY') {
          const elem = r.valueType(`metadata ${key}'s elements`);
          const n = r.count(`metadata ${key}'s length`, MIN_BYTES[elem] ?? 4);
          const value: GgufScalarValue[] = new Array<GgufScalarValue>(n);
          for (let j = 0; j < n; j++) value[j] = r.scalar(elem, `metadata ${key}[${j}]`);
          this.metadata.set(key, { type, elem, value });
        } else {
          this.metadata.set(key, { type, value: r.scalar(type, `metadata ${key}`) });
        }
      }
      const align = this.metadata.get('general.alignment');
      if (align && (align.type !== 'UINT32' || !isPowerOfTwo(align.value as number)))
        fail(`${path}: general.alignment ${String(align.value)} (${align.type}) is not a UINT32 power of two`);
      this.alignment = align ? (align.value as number) : DEFAULT_ALIGNMENT;
      const infos: { name: string; dims: number[]; type: number; rel: bigint }[] = [];
      for (let i = 0; i < nTensors; i++) {
        const name = r.string(`tensor name ${i}`);
        const nDims = r.u32(`tensor ${name}'s n_dims`);
        if (nDims < 1 || nDims > 4) fail(`${path}: tensor ${name} has ${nDims} dimensions (GGUF allows 1 to 4)`);
        const dims: number[] = [];
        for (let d = 0; d < nDims; d++) {
          const n = r.u64(`tensor ${name}'s dimension ${d}`);
          if (n === 0n || n > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${path}: tensor ${name} has dimension ${d} of ${n}`);
          dims.push(Number(n));
        }
        infos.push({ name, dims, type: r.u32(`tensor ${name}'s type`), rel: r.u64(`tensor ${name}'s offset`) });
      }
      const dataStart = Math.ceil(r.pos / this.alignment) * this.alignment;
      for (const t of infos) {
        if (this.tensors.has(t.name)) fail(`${path}: tensor ${t.name} appears twice`);
        const ti = GGML_TYPE_SIZES[t.type];
        if (!ti) fail(`${path}: tensor ${t.name} has unknown ggml type ${t.type}`);
        const elements = t.dims.reduce((a, b) => a * b, 1);
        if (!Number.isSafeInteger(elements)) fail(`${path}: tensor ${t.name} has too many elements`);
        if (t.dims[0]! % ti.block !== 0)
          fail(`${path}: tensor ${t.name} is ${ti.name} but its rows of ${t.dims[0]} are not whole blocks of ${ti.block}`);
        if (t.rel % BigInt(this.alignment) !== 0n)
          fail(`${path}: tensor ${t.name}'s offset ${t.rel} is not a multiple of the alignment ${this.alignment}`);
        const bytes = (elements / ti.block) * ti.bytes;
        const offset = dataStart + Number(t.rel);
        if (t.rel > BigInt(this.size) || offset + bytes > this.size)
          fail(
            `${path}: tensor ${t.name} (bytes ${offset}..${offset + bytes}) runs past the end of the file (${this.size} bytes): truncated or corrupt`,
          );
        this.tensors.set(t.name, { name: t.name, type: t.type, typeName: ti.name, shape: [...t.dims].reverse(), elements, offset, bytes });
      }
      const byOffset = [...this.tensors.values()].sort((a, b) => a.offset - b.offset);
      for (let i = 1; i < byOffset.length; i++) {
        const [a, b] = [byOffset[i - 1]!, byOffset[i]!];
        if (b.offset < a.offset + a.bytes) fail(`${path}: tensors ${a.name} and ${b.name} overlap (bytes from ${b.offset})`);
      }
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  has(key: string): boolean {
    return this.metadata.has(key);
  }

  /** A metadata value, checked to be of one of the given types (numbers of any integer or float type read alike). */
  value(key: string, kind: 'number' | 'string' | 'boolean'): GgufScalarValue | undefined {
    const e = this.metadata.get(key);
    if (!e) return undefined;
    if (e.type === 'ARRAY' || typeof e.value !== kind) fail(`${this.path}: metadata ${key} is ${e.type}, not a ${kind}`);
    return e.value as GgufScalarValue;
  }
  number(key: string): number | undefined {
    return this.value(key, 'number') as number | undefined;
  }
  string(key: string): string | undefined {
    return this.value(key, 'string') as string | undefined;
  }
  bool(key: string): boolean | undefined {
    return this.value(key, 'boolean') as boolean | undefined;
  }
  array(key: string, elem: 'number' | 'string'): GgufScalarValue[] | undefined {
    const e = this.metadata.get(key);
    if (!e) return undefined;
    if (e.type !== 'ARRAY' || (e.value as GgufScalarValue[]).some((v) => typeof v !== elem))
      fail(`${this.path}: metadata ${key} is not an array of ${elem}s`);
    return e.value as GgufScalarValue[];
  }

  info(name: string): GgufTensorInfo {
    const t = this.tensors.get(name);
    if (!t) fail(`${this.path}: missing tensor ${name}`);
    return t;
  }

  /** A tensor's bytes as stored. */
  readRaw(name: string): Uint8Array {
    const t = this.info(name);
    const buf = new Uint8Array(t.bytes);
    let done = 0;
    while (done < t.bytes) {
      const n = readSync(this.fd, buf, done, t.bytes - done, t.offset + done);
      if (n === 0) fail(`${this.path}: tensor ${name}: the file ended while reading it`);
      done += n;
    }
    return buf;
  }

  /** A tensor as float32, row-major, dequantized exactly as llama.cpp does; other types are refused by name. */
  readFloat(name: string): Float32Array {
    const t = this.info(name);
    const raw = this.readRaw(name);
    switch (t.typeName) {
      case 'F32':
        return new Float32Array(raw.buffer, 0, t.elements);
      case 'F16':
        return halfArrayToFloat(new Uint16Array(raw.buffer, 0, t.elements));
      case 'BF16':
        return bf16ArrayToFloat(new Uint16Array(raw.buffer, 0, t.elements));
    }
    if (!Object.hasOwn(GGML_TYPES, t.typeName))
      fail(`${this.path}: tensor ${name} is ${t.typeName}, which gptq-ts does not dequantize (it reads ${DEQUANTIZED.join(', ')})`);
    return dequantizeRow(t.typeName as BlockType, raw, t.elements);
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** The block types that are GPTQ's symmetric grid with groups of 32: w = d·(q − zero), as the packed kernels compute. */
export const PACKED_TYPES: Partial<Record<string, { bits: number; zero: number }>> = {
  Q4_0: { bits: 4, zero: 8 },
  Q8_0: { bits: 8, zero: 128 },
};

/**
 * A Q4_0 / Q8_0 matrix [rows, cols] as the packed GPTQ kernels take it (gptq_v2 zeros): the same integer codes, one
 * group per block with d as its scale and a zero of 8 / 128, so it runs without forming the float matrix and
 * computes exactly llama.cpp's dequantized weights. File row i becomes output row rowOf(i).
 */
export function packedFromBlocks(
  type: string,
  raw: Uint8Array,
  rows: number,
  cols: number,
  rowOf: (i: number) => number,
): PackedLinearWeights {
  const spec = PACKED_TYPES[type];
  if (!spec) throw new Error(`${type} is not a packed type`);
  const { bits, zero } = spec;
  const L = BLOCK_LAYOUTS[type as BlockType];
  const G = cols / 32;
  const qweight = new Int32Array(((cols * bits) / 32) * rows);
  const scales = new Float32Array(G * rows);
  const codes = new Uint8Array(cols);
  for (let i = 0; i < rows; i++) {
    const r = rowOf(i);
    for (let g = 0; g < G; g++) {
      const b = unpackBlock(type as BlockType, raw, (i * G + g) * L.bytes);
      scales[g * rows + r] = b.d;
      codes.set(b.codes, g * 32);
    }
    packStream(
      cols,
      bits,
      (c) => codes[c]!,
      (w, word) => (qweight[w * rows + r] = word),
    );
  }
  const zw = (rows * bits) / 32;
  const qzeros = new Int32Array(G * zw);
  packStream(
    rows,
    bits,
    () => zero,
    (w, word) => {
      for (let g = 0; g < G; g++) qzeros[g * zw + w] = word;
    },
  );
  return { rows, cols, bits, qweight, qzeros, scales, gIdx: Int32Array.from({ length: cols }, (_, c) => c >> 5) };
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** Whether a path names a GGUF file (by its magic, so a misnamed file is still read as what it is). */
export function isGgufFile(path: string): boolean {
  if (!existsSync(path)) return path.toLowerCase().endsWith('.gguf');
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false;
  }
  try {
    if (!fstatSync(fd).isFile()) return false;
    const b = Buffer.alloc(4);
    return readSync(fd, b, 0, 4, 0) === 4 && b.readUInt32LE(0) === MAGIC;
  } finally {
    closeSync(fd);
  }
}
