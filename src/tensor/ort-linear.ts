import type { ActivationPrecision, PackedLinearWeights } from './backend.js';
import { streamValue } from './bit-stream.js';
import { ElemType, float32Bytes, MS_DOMAIN, type Initializer, type NodeSpec } from './onnx-graph.js';

/**
 * GPTQ-packed layers as onnxruntime MatMulNBits operators (com.microsoft). MatMulNBits stores each output row's
 * codes in blocks of a power-of-two number of input columns, [rows, blocks, block bytes], with one scale and one
 * packed zero point per block. GPTQ's int32 words are re-laid into that form once, at load, integer to integer;
 * the float matrix is never formed.
 *
 * - Bit widths: the CPU operator has fast float32 paths for 4 bits only, so 2- and 3-bit codes ride in 4-bit
 *   slots there (exact, half the saving lost for 2 bits); with int8 activations 2 and 8 bits run natively.
 *   8-bit codes with float32 activations are split into two 4-bit digits, q = 16·hi + lo, zero likewise:
 *   W = 16s·(hi − z_hi) + s·(lo − z_lo), the sum of two 4-bit products.
 * - Groups: a block must lie inside one group, so the block size is the largest power of two (16..128) that
 *   divides every group start. act-order (g_idx not sorted) permutes the input columns so each group is
 *   contiguous, and the graph gathers x's columns in that order first (the exllama approach).
 */

export interface NBitsLayout {
  blockSize: number;
  /** input column at each position of the kernel's order, when it differs from 0..cols-1 */
  order?: Int32Array;
  /** group of each block */
  blockGroup: Int32Array;
}

const MIN_BLOCK = 16;
const MAX_BLOCK = 128;

/** The block layout for a g_idx, or undefined when some group boundary is not a multiple of 16 columns. */
export function nbitsLayout(gIdx: Int32Array): NBitsLayout | undefined {
  const cols = gIdx.length;
  const idx = Array.from({ length: cols }, (_, c) => c);
  const sorted = idx.every((c) => c === 0 || gIdx[c - 1]! <= gIdx[c]!);
  const order = sorted ? undefined : Int32Array.from(idx.sort((a, b) => gIdx[a]! - gIdx[b]! || a - b));
  const at = (i: number): number => gIdx[order ? order[i]! : i]!;
  let blockSize = MAX_BLOCK;
  for (let i = 1; i < cols; i++) {
    if (at(i) === at(i - 1)) continue;
    while (blockSize >= MIN_BLOCK && i % blockSize !== 0) blockSize /= 2;
  }
  if (blockSize < MIN_BLOCK) return undefined;
  const blocks = Math.ceil(cols / blockSize);
  const blockGroup = Int32Array.from({ length: blocks }, (_, b) => at(b * blockSize));
  return order ? { blockSize, order, blockGroup } : { blockSize, blockGroup };
}

/** A view of the codes and zero points as one MatMulNBits operand: which digit, and its scale multiplier. */
interface Digit {
  bits: number;
  value: (v: number) => number;
  scale: number;
}

const sameCode = (v: number): number => v;

/** Little-endian sub-byte packing of `values` into `out` starting at byte `at` (MatMulNBits' element order). */
function packBits(values: Uint8Array, bits: number, out: Uint8Array, at: number): void {
  const per = 8 / bits;
  for (let i = 0, byte = at; i < values.length; byte++) {
    let v = 0;
    for (let j = 0; j < per && i < values.length; j++, i++) v |= values[i]! << (j * bits);
    out[byte] = v;
  }
}

/** Row r's codes in column order, out of its words of GPTQ's little-endian stream. */
function unpackRow(qwT: Int32Array, r: number, words: number, bits: number, out: Uint8Array): void {
  const base = r * words;
  if (32 % bits !== 0) {
    const word = (w: number): number => qwT[base + w]!;
    for (let i = 0; i < out.length; i++) out[i] = streamValue(word, i, bits);
    return;
  }
  const per = 32 / bits;
  const mask = (1 << bits) - 1;
  for (let w = 0; w < words; w++) {
    let v = qwT[base + w]!;
    for (let j = 0; j < per; j++, v >>>= bits) out[w * per + j] = v & mask;
  }
}

/** Each output row's qweight words made contiguous ([rows, words]), instead of striding across qweight for every code. */
function rowMajorWords(p: PackedLinearWeights): Int32Array {
  const words = (p.cols * p.bits) / 32;
  const qwT = new Int32Array(p.rows * words);
  // sixteen rows at a time, so the writes of a word's column land in lines still cached for the next word (an
  // 11008 x 4096 4-bit layer's words, best of 8: 33 ms by a plain double loop, 14 in strips)
  const T = 16;
  for (let r0 = 0; r0 < p.rows; r0 += T) {
    const r1 = Math.min(r0 + T, p.rows);
    for (let w = 0; w < words; w++) {
      for (let r = r0, src = w * p.rows + r0, dst = r0 * words + w; r < r1; r++, src++, dst += words) qwT[dst] = p.qweight[src]!;
    }
  }
  return qwT;
}

/** A layer's scales [rows·blocks] and zero points [rows, blocks] for one digit, block by block. */
function nbitsScales(p: PackedLinearWeights, layout: NBitsLayout, d: Digit): { blocks: number; scales: Float32Array; zeros: Uint8Array } {
  const { rows, bits } = p;
  const blocks = layout.blockGroup.length;
  const scales = new Float32Array(rows * blocks);
  const zeros = new Uint8Array(rows * blocks);
  const zeroWords = (rows * bits) / 32;
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < blocks; b++) {
      const g = layout.blockGroup[b]!;
      zeros[r * blocks + b] = d.value(streamValue((w) => p.qzeros[g * zeroWords + w]!, r, bits));
      scales[r * blocks + b] = d.scale * p.scales[g * rows + r]!;
    }
  }
  return { blocks, scales, zeros };
}

/** A layer's blocks of codes [rows, blocks, block bytes] for one digit (`zeros`: its zero points, for the padding). */
function nbitsCodes(p: PackedLinearWeights, qwT: Int32Array, layout: NBitsLayout, d: Digit, zeros: Uint8Array): Uint8Array {
  const { rows, cols, bits } = p;
  const { blockSize, order } = layout;
  const blocks = layout.blockGroup.length;
  const blob = (blockSize * d.bits) / 8;
  // GPTQ's words for 2, 4 or 8 bits in column order are already MatMulNBits' bytes, row by row (both little-endian):
  // a 7B model's 6.5e9 codes are not touched one by one at load
  if (d.bits === bits && d.value === sameCode && 32 % bits === 0 && !order && blocks * blockSize === cols)
    return new Uint8Array(qwT.buffer, qwT.byteOffset, rows * blocks * blob);
  const B = new Uint8Array(rows * blocks * blob);
  const words = (cols * bits) / 32;
  const row = new Uint8Array(cols);
  const codes = new Uint8Array(blocks * blockSize);
  for (let r = 0; r < rows; r++) {
    unpackRow(qwT, r, words, bits, row);
    if (order) for (let i = 0; i < cols; i++) codes[i] = row[order[i]!]!;
    else codes.set(row);
    if (d.value !== sameCode) for (let i = 0; i < cols; i++) codes[i] = d.value(codes[i]!);
    // padding past the last column holds the block's zero point, so it adds nothing
    for (let i = cols; i < codes.length; i++) codes[i] = zeros[r * blocks + Math.floor(i / blockSize)]!;
    packBits(codes, d.bits, B, r * blocks * blob);
  }
  return B;
}

/** One MatMulNBits node reading `input`, with its blocks of codes, scales and zero points as initializers. */
function nbitsOperand(
  p: PackedLinearWeights,
  qwT: Int32Array,
  layout: NBitsLayout,
  d: Digit,
  io: { input: string; output: string },
  accuracyLevel: number,
): { inits: Initializer[]; node: NodeSpec } {
  const { rows, cols } = p;
  const { blocks, scales, zeros } = nbitsScales(p, layout, d);
  const B = nbitsCodes(p, qwT, layout, d, zeros);
  const blob = (layout.blockSize * d.bits) / 8;
  const zpBytes = Math.ceil((blocks * d.bits) / 8);
  const zp = new Uint8Array(rows * zpBytes);
  for (let r = 0; r < rows; r++) packBits(zeros.subarray(r * blocks, (r + 1) * blocks), d.bits, zp, r * zpBytes);
  return {
    inits: [
      { name: `${io.output}_B`, elemType: ElemType.UINT8, dims: [rows, blocks, blob], data: B },
      { name: `${io.output}_s`, elemType: ElemType.FLOAT, dims: [rows * blocks], data: float32Bytes(scales) },
      { name: `${io.output}_z`, elemType: ElemType.UINT8, dims: [rows * zpBytes], data: zp },
    ],
    node: {
      opType: 'MatMulNBits',
      domain: MS_DOMAIN,
      inputs: [io.input, `${io.output}_B`, `${io.output}_s`, `${io.output}_z`],
      outputs: [io.output],
      intAttrs: { K: cols, N: rows, bits: d.bits, block_size: layout.blockSize, accuracy_level: accuracyLevel },
    },
  };
}

/** The block layout of a layer the native kernel takes (see nativeBlocks), or undefined. */
export function nativeLayout(p: PackedLinearWeights): NBitsLayout | undefined {
  const layout = p.bits === 4 || p.bits === 8 ? nbitsLayout(p.gIdx) : undefined;
  return layout && p.cols % layout.blockSize === 0 ? layout : undefined;
}

/**
 * A 4- or 8-bit layer's scales and zero points in blocks of `blockSize` columns (MatMulNBits' layout: the largest
 * power of two up to 128 that every group start is a multiple of; the native kernel's input, native.ts), and its
 * codes: GPTQ's qweight words as they are, or under act-order the codes in the layer's column order, [rows, blocks,
 * blockSize·bits/8] bytes, with that order. Undefined for other bit widths, where a group starts off a multiple of
 * 16 columns, or where the columns are not whole blocks.
 */
export function nativeBlocks(
  p: PackedLinearWeights,
):
  | { blocks: number; blockSize: number; scales: Float32Array; zeros: Uint8Array; codes: Int32Array | Uint8Array; order?: Int32Array }
  | undefined {
  const layout = nativeLayout(p);
  if (!layout) return undefined;
  const digit = { bits: p.bits, value: sameCode, scale: 1 };
  const data = { ...nbitsScales(p, layout, digit), blockSize: layout.blockSize };
  if (!layout.order) return { ...data, codes: p.qweight };
  return { ...data, codes: nbitsCodes(p, rowMajorWords(p), layout, digit, data.zeros), order: layout.order };
}

/** The digits a layer is split into for one precision (see the file comment). */
function digits(bits: number, activations: ActivationPrecision): Digit[] {
  if (bits === 8 && activations === 'fp32') {
    return [
      { bits: 4, value: (v) => v >>> 4, scale: 16 },
      { bits: 4, value: (v) => v & 15, scale: 1 },
    ];
  }
  const native = activations === 'int8' ? [2, 4, 8] : [4];
  return [{ bits: native.includes(bits) ? bits : 4, value: sameCode, scale: 1 }];
}

/**
 * The graph of one packed layer: input 'x' [m, cols] → output 'y' [m, rows]; the weights are initializers,
 * so onnxruntime packs them once at session creation. Undefined when its groups fit no MatMulNBits layout.
 */
export function packedLinearGraph(
  p: PackedLinearWeights,
  activations: ActivationPrecision,
): { nodes: NodeSpec[]; inits: Initializer[] } | undefined {
  const layout = nbitsLayout(p.gIdx);
  if (!layout) return undefined;
  const nodes: NodeSpec[] = [];
  const inits: Initializer[] = [];
  let input = 'x';
  if (layout.order) {
    const idx = BigInt64Array.from(layout.order, (c) => BigInt(c));
    inits.push({ name: 'order', elemType: ElemType.INT64, dims: [idx.length], data: new Uint8Array(idx.buffer) });
    nodes.push({ opType: 'Gather', inputs: ['x', 'order'], outputs: ['xo'], intAttrs: { axis: 1 } });
    input = 'xo';
  }
  const parts = digits(p.bits, activations);
  const level = activations === 'int8' ? 4 : 0;
  const qwT = rowMajorWords(p);
  parts.forEach((d, i) => {
    const o = nbitsOperand(p, qwT, layout, d, { input, output: parts.length === 1 ? 'y' : `y${i}` }, level);
    nodes.push(o.node);
    inits.push(...o.inits);
  });
  if (parts.length === 2) nodes.push({ opType: 'Add', inputs: ['y0', 'y1'], outputs: ['y'] });
  return { nodes, inits };
}

/** Bytes the kernel keeps: blocks of codes, scales and zero points of every digit. */
export function initializerBytes(inits: Initializer[]): number {
  return inits.reduce((s, t) => s + t.data.byteLength, 0);
}
