import { fail } from '../io/errors.js';
import { floatToHalf, halfToFloat } from '../io/fp16.js';

/**
 * llama.cpp's quantized block formats (ggml-common.h) as data: a block holds integer codes for its elements and the
 * integer sub-block scales/mins and fp16 factors that turn them into weights. `dequantizeBlock` computes each weight
 * exactly as llama.cpp's dequantize_row_* does in float32 (ggml-quants.c), so a grid that GPTQ sweeps over can be the
 * stored format itself; `packBlock`/`unpackBlock` are the byte layouts, inverse of each other.
 */

export const GGML_TYPES = {
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  IQ4_NL: 20,
} as const;
export type BlockType = keyof typeof GGML_TYPES;

/** One block: codes per element (unsigned: 0 .. 2^bits − 1), with its factors. */
export interface Block {
  /** the block's (or super-block's) fp16 scale */
  d: number;
  /** Q4_1/Q5_1: the fp16 min m; K-quants with mins: the fp16 scale of the sub-block mins */
  m: number;
  /** K-quants: each sub-block's integer scale (Q3_K: 0..63, read as s − 32; Q6_K: −128..127) */
  scales: Int32Array;
  /** Q2_K/Q4_K/Q5_K: each sub-block's integer min */
  mins: Int32Array;
  codes: Uint8Array;
}

interface Layout {
  /** elements per block */
  size: number;
  bytes: number;
  /** bits per code */
  bits: number;
  /** elements per sub-block (K-quants), else the block */
  sub: number;
  /** bits of a sub-block scale / min (0: none) */
  scaleBits: number;
  minBits: number;
}

export const BLOCK_LAYOUTS: Record<BlockType, Layout> = {
  Q4_0: { size: 32, bytes: 18, bits: 4, sub: 32, scaleBits: 0, minBits: 0 },
  Q4_1: { size: 32, bytes: 20, bits: 4, sub: 32, scaleBits: 0, minBits: 0 },
  Q5_0: { size: 32, bytes: 22, bits: 5, sub: 32, scaleBits: 0, minBits: 0 },
  Q5_1: { size: 32, bytes: 24, bits: 5, sub: 32, scaleBits: 0, minBits: 0 },
  Q8_0: { size: 32, bytes: 34, bits: 8, sub: 32, scaleBits: 0, minBits: 0 },
  IQ4_NL: { size: 32, bytes: 18, bits: 4, sub: 32, scaleBits: 0, minBits: 0 },
  Q2_K: { size: 256, bytes: 84, bits: 2, sub: 16, scaleBits: 4, minBits: 4 },
  Q3_K: { size: 256, bytes: 110, bits: 3, sub: 16, scaleBits: 6, minBits: 0 },
  Q4_K: { size: 256, bytes: 144, bits: 4, sub: 32, scaleBits: 6, minBits: 6 },
  Q5_K: { size: 256, bytes: 176, bits: 5, sub: 32, scaleBits: 6, minBits: 6 },
  Q6_K: { size: 256, bytes: 210, bits: 6, sub: 16, scaleBits: 8, minBits: 0 },
};

/**
 * The type a tensor whose rows are `cols` long gets when asked for `type`: llama.cpp's fallback for rows that are
 * not whole super-blocks (llama-quant.cpp tensor_type_fallback): Q2_K and Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1,
 * Q6_K → Q8_0.
 */
export function typeForRows(type: BlockType, cols: number): BlockType {
  if (cols % BLOCK_LAYOUTS[type].size === 0) return type;
  const fallback: Partial<Record<BlockType, BlockType>> = { Q2_K: 'Q4_0', Q3_K: 'Q4_0', Q4_K: 'Q5_0', Q5_K: 'Q5_1', Q6_K: 'Q8_0' };
  const f = fallback[type];
  if (!f || cols % BLOCK_LAYOUTS[f].size !== 0) fail(`${type}: rows of ${cols} are not whole blocks of ${BLOCK_LAYOUTS[type].size}`);
  return f;
}

/** IQ4_NL's 16 non-uniform levels (kvalues_iq4nl), times the block's d. */
export const IQ4_NL_LEVELS = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113] as const;

const f = Math.fround;

/**
 * The weights of one block, as llama.cpp computes them (float32, operation by operation): x = a·q + b with
 * per-type a and b; the order of each product follows dequantize_row_*.
 */
export function dequantizeBlock(type: BlockType, b: Block, out: Float32Array, at = 0): void {
  const L = BLOCK_LAYOUTS[type];
  const { d, m, codes: q } = b;
  for (let i = 0; i < L.size; i++) {
    const s = Math.floor(i / L.sub);
    let v: number;
    switch (type) {
      case 'Q4_0':
        v = f((q[i]! - 8) * d);
        break;
      case 'Q5_0':
        v = f((q[i]! - 16) * d);
        break;
      case 'Q8_0':
        v = f((q[i]! - 128) * d);
        break;
      case 'Q4_1':
      case 'Q5_1':
        v = f(f(q[i]! * d) + m);
        break;
      case 'IQ4_NL':
        v = f(d * IQ4_NL_LEVELS[q[i]!]!);
        break;
      case 'Q2_K':
      case 'Q4_K':
      case 'Q5_K':
        v = f(f(f(d * b.scales[s]!) * q[i]!) - f(m * b.mins[s]!));
        break;
      case 'Q3_K':
        v = f(f(d * (b.scales[s]! - 32)) * (q[i]! - 4));
        break;
      case 'Q6_K':
        v = f(f(d * b.scales[s]!) * (q[i]! - 32));
        break;
    }
    out[at + i] = v;
  }
}

/** Q4_K/Q5_K: 8 six-bit scales and 8 six-bit mins in 12 bytes (get_scale_min_k4). */
function packScaleMin6(sc: Int32Array, mn: Int32Array, o: Uint8Array, at: number): void {
  for (let j = 0; j < 4; j++) {
    o[at + j] = sc[j]! | ((sc[j + 4]! >> 4) << 6);
    o[at + j + 4] = mn[j]! | ((mn[j + 4]! >> 4) << 6);
    o[at + j + 8] = (sc[j + 4]! & 0xf) | ((mn[j + 4]! & 0xf) << 4);
  }
}

function unpackScaleMin6(q: Uint8Array, at: number, sc: Int32Array, mn: Int32Array): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      sc[j] = q[at + j]! & 63;
      mn[j] = q[at + j + 4]! & 63;
    } else {
      sc[j] = (q[at + j + 4]! & 0xf) | ((q[at + j - 4]! >> 6) << 4);
      mn[j] = (q[at + j + 4]! >> 4) | ((q[at + j]! >> 6) << 4);
    }
  }
}

/** Q3_K: 16 six-bit scales in 12 bytes: low nibbles in bytes 0..7 (two per byte), high pairs in bytes 8..11. */
function packScale6x16(sc: Int32Array, o: Uint8Array, at: number): void {
  for (let j = 0; j < 8; j++) o[at + j] = (sc[j]! & 0xf) | ((sc[j + 8]! & 0xf) << 4);
  for (let i = 0; i < 4; i++) {
    let v = 0;
    for (let g = 0; g < 4; g++) v |= ((sc[4 * g + i]! >> 4) & 3) << (2 * g);
    o[at + 8 + i] = v;
  }
}

function unpackScale6x16(q: Uint8Array, at: number, sc: Int32Array): void {
  for (let j = 0; j < 16; j++) {
    const low = j < 8 ? q[at + j]! & 0xf : q[at + j - 8]! >> 4;
    sc[j] = low | (((q[at + 8 + (j % 4)]! >> (2 * Math.floor(j / 4))) & 3) << 4);
  }
}

/**
 * Where K-quants keep element e's low bits: Q2_K/Q3_K/Q6_K go in halves of 128 (e = 128n + 32j + l) and Q4_K/Q5_K
 * in chunks of 64 (e = 64c + 32h + l), interleaving the element's position in its chunk across bytes and shifts.
 */
function kIndex(type: BlockType, e: number): { byte: number; shift: number } {
  if (type === 'Q4_K' || type === 'Q5_K') {
    const c = e >> 6;
    return { byte: 32 * c + (e & 31), shift: (e >> 5) & 1 ? 4 : 0 };
  }
  const n = e >> 7;
  const j = (e >> 5) & 3;
  const l = e & 31;
  return { byte: 32 * n + l, shift: 2 * j };
}

export function packBlock(type: BlockType, b: Block, o: Uint8Array, at: number): void {
  const L = BLOCK_LAYOUTS[type];
  const q = b.codes;
  const view = new DataView(o.buffer, o.byteOffset, o.byteLength);
  const half = (off: number, v: number): void => view.setUint16(at + off, floatToHalf(v), true);
  o.fill(0, at, at + L.bytes);
  switch (type) {
    case 'Q4_0':
    case 'Q4_1':
    case 'IQ4_NL': {
      const base = type === 'Q4_1' ? 4 : 2;
      half(0, b.d);
      if (type === 'Q4_1') half(2, b.m);
      // first 16 values in the low nibbles, last 16 in the high nibbles
      for (let j = 0; j < 16; j++) o[at + base + j] = q[j]! | (q[j + 16]! << 4);
      return;
    }
    case 'Q5_0':
    case 'Q5_1': {
      const base = type === 'Q5_1' ? 4 : 2;
      half(0, b.d);
      if (type === 'Q5_1') half(2, b.m);
      let qh = 0;
      for (let i = 0; i < 32; i++) qh |= ((q[i]! >> 4) & 1) << i;
      view.setUint32(at + base, qh >>> 0, true);
      for (let j = 0; j < 16; j++) o[at + base + 4 + j] = (q[j]! & 0xf) | ((q[j + 16]! & 0xf) << 4);
      return;
    }
    case 'Q8_0':
      half(0, b.d);
      for (let j = 0; j < 32; j++) view.setInt8(at + 2 + j, q[j]! - 128);
      return;
    case 'Q2_K':
      for (let s = 0; s < 16; s++) o[at + s] = b.scales[s]! | (b.mins[s]! << 4);
      for (let e = 0; e < 256; e++) {
        const { byte, shift } = kIndex(type, e);
        o[at + 16 + byte]! |= (q[e]! & 3) << shift;
      }
      half(80, b.d);
      half(82, b.m);
      return;
    case 'Q3_K':
      for (let e = 0; e < 256; e++) {
        const { byte, shift } = kIndex(type, e);
        o[at + 32 + byte]! |= (q[e]! & 3) << shift;
        // the high bit: byte l of hmask, bit 4n + j
        if (q[e]! & 4) o[at + (e & 31)]! |= 1 << (4 * (e >> 7) + ((e >> 5) & 3));
      }
      packScale6x16(b.scales, o, at + 96);
      half(108, b.d);
      return;
    case 'Q4_K':
    case 'Q5_K': {
      half(0, b.d);
      half(2, b.m);
      packScaleMin6(b.scales, b.mins, o, at + 4);
      const qs = type === 'Q5_K' ? 48 : 16;
      for (let e = 0; e < 256; e++) {
        const { byte, shift } = kIndex(type, e);
        o[at + qs + byte]! |= (q[e]! & 0xf) << shift;
        // Q5_K's fifth bit: byte l of qh, bit (e / 32)
        if (type === 'Q5_K' && q[e]! & 16) o[at + 16 + (e & 31)]! |= 1 << (e >> 5);
      }
      return;
    }
    case 'Q6_K':
      for (let e = 0; e < 256; e++) {
        const n = e >> 7;
        const k = (e >> 5) & 3;
        const l = e & 31;
        // quarters 0,1 in the low nibbles of ql[l], ql[l + 32]; quarters 2,3 in their high nibbles
        o[at + 64 * n + l + (k & 1) * 32]! |= (q[e]! & 0xf) << (k >> 1 ? 4 : 0);
        o[at + 128 + 32 * n + l]! |= (q[e]! >> 4) << (2 * k);
      }
      for (let s = 0; s < 16; s++) view.setInt8(at + 192 + s, b.scales[s]!);
      half(208, b.d);
      return;
  }
}

export function unpackBlock(type: BlockType, o: Uint8Array, at: number): Block {
  const L = BLOCK_LAYOUTS[type];
  const view = new DataView(o.buffer, o.byteOffset, o.byteLength);
  const half = (off: number): number => halfToFloat(view.getUint16(at + off, true));
  const subs = L.size / L.sub;
  const b: Block = { d: 0, m: 0, scales: new Int32Array(subs), mins: new Int32Array(subs), codes: new Uint8Array(L.size) };
  const q = b.codes;
  switch (type) {
    case 'Q4_0':
    case 'Q4_1':
    case 'IQ4_NL': {
      const base = type === 'Q4_1' ? 4 : 2;
      b.d = half(0);
      if (type === 'Q4_1') b.m = half(2);
      for (let j = 0; j < 16; j++) {
        q[j] = o[at + base + j]! & 0xf;
        q[j + 16] = o[at + base + j]! >> 4;
      }
      return b;
    }
    case 'Q5_0':
    case 'Q5_1': {
      const base = type === 'Q5_1' ? 4 : 2;
      b.d = half(0);
      if (type === 'Q5_1') b.m = half(2);
      const qh = view.getUint32(at + base, true);
      for (let j = 0; j < 16; j++) {
        q[j] = (o[at + base + 4 + j]! & 0xf) | (((qh >>> j) & 1) << 4);
        q[j + 16] = (o[at + base + 4 + j]! >> 4) | (((qh >>> (j + 16)) & 1) << 4);
      }
      return b;
    }
    case 'Q8_0':
      b.d = half(0);
      for (let j = 0; j < 32; j++) q[j] = view.getInt8(at + 2 + j) + 128;
      return b;
    case 'Q2_K':
      for (let s = 0; s < 16; s++) {
        b.scales[s] = o[at + s]! & 0xf;
        b.mins[s] = o[at + s]! >> 4;
      }
      for (let e = 0; e < 256; e++) {
        const { byte, shift } = kIndex(type, e);
        q[e] = (o[at + 16 + byte]! >> shift) & 3;
      }
      b.d = half(80);
      b.m = half(82);
      return b;
    case 'Q3_K':
      for (let e = 0; e < 256; e++) {
        const { byte, shift } = kIndex(type, e);
        const high = (o[at + (e & 31)]! >> (4 * (e >> 7) + ((e >> 5) & 3))) & 1;
        q[e] = ((o[at + 32 + byte]! >> shift) & 3) | (high << 2);
      }
      unpackScale6x16(o, at + 96, b.scales);
      b.d = half(108);
      return b;
    case 'Q4_K':
    case 'Q5_K': {
      b.d = half(0);
      b.m = half(2);
      unpackScaleMin6(o, at + 4, b.scales, b.mins);
      const qs = type === 'Q5_K' ? 48 : 16;
      for (let e = 0; e < 256; e++) {
        const { byte, shift } = kIndex(type, e);
        const high = type === 'Q5_K' ? ((o[at + 16 + (e & 31)]! >> (e >> 5)) & 1) << 4 : 0;
        q[e] = ((o[at + qs + byte]! >> shift) & 0xf) | high;
      }
      return b;
    }
    case 'Q6_K':
      for (let e = 0; e < 256; e++) {
        const n = e >> 7;
        const k = (e >> 5) & 3;
        const l = e & 31;
        const low = (o[at + 64 * n + l + (k & 1) * 32]! >> (k >> 1 ? 4 : 0)) & 0xf;
        q[e] = low | (((o[at + 128 + 32 * n + l]! >> (2 * k)) & 3) << 4);
      }
      for (let s = 0; s < 16; s++) b.scales[s] = view.getInt8(at + 192 + s);
      b.d = half(208);
      return b;
  }
}

/** A row of n elements in blocks of the type: the bytes, and the weights llama.cpp reads from them. */
export function dequantizeRow(type: BlockType, bytes: Uint8Array, n: number, at = 0): Float32Array {
  const L = BLOCK_LAYOUTS[type];
  if (n % L.size !== 0) fail(`${type}: a row of ${n} is not whole blocks of ${L.size}`);
  const out = new Float32Array(n);
  for (let k = 0; k < n / L.size; k++) dequantizeBlock(type, unpackBlock(type, bytes, at + k * L.bytes), out, k * L.size);
  return out;
}
