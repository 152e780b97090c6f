import { floatToHalf, halfArrayToFloat } from '../io/fp16.js';
import { numGroups, type QuantizedLayer } from '../quant/quantized-layer.js';
import type { PackedLinearWeights } from '../tensor/backend.js';
import { streamValue } from '../tensor/bit-stream.js';

/**
 * GPTQ integer packing (the AutoGPTQ / GPTQModel / transformers layout): values of `bits` bits laid one after
 * another, least significant bits first, in a little-endian stream of int32 words. For 2, 4 and 8 bits a word
 * holds 32/bits whole values; for 3 bits 32 values fill 3 words and values 10 and 21 straddle word boundaries
 * (10 + 1 + 10 + 1 + 10), which is what the stream view gives without a special case.
 */

/** Pack n values (read through `get`) into n·bits/32 words written through `put(wordIndex, word)`. */
export function packStream(n: number, bits: number, get: (i: number) => number, put: (w: number, word: number) => void): void {
  if ((n * bits) % 32 !== 0) throw new RangeError(`${n} values of ${bits} bits do not fill whole 32-bit words`);
  const mask = (1 << bits) - 1;
  let word = 0;
  let w = 0;
  for (let i = 0; i < n; i++) {
    const v = get(i) & mask;
    const off = (i * bits) % 32;
    word |= v << off;
    if (off + bits >= 32) {
      put(w++, word | 0);
      // the bits that did not fit start the next word
      word = off + bits > 32 ? v >>> (32 - off) : 0;
    }
  }
}

/** Unpack n values from words read through `get(wordIndex)`. */
export function unpackStream(n: number, bits: number, get: (w: number) => number, put: (i: number, value: number) => void): void {
  for (let i = 0; i < n; i++) put(i, streamValue(get, i, bits));
}

/** The four tensors of one quantized linear layer, as stored in a GPTQ checkpoint. */
export interface GptqTensors {
  /** int32 [cols·bits/32, rows] */
  qweight: Int32Array;
  /** int32 [groups, rows·bits/32] */
  qzeros: Int32Array;
  /** fp16 bits [groups, rows] */
  scales: Uint16Array;
  /** int32 [cols] */
  gIdx: Int32Array;
}

export type CheckpointFormat = 'gptq' | 'gptq_v2';

/** v1 ("gptq") checkpoints store zero − 1 (AutoGPTQ's convention); v2 stores the zero point itself. */
export const zeroOffset = (format: CheckpointFormat): number => (format === 'gptq' ? 1 : 0);

export function packLayer(q: QuantizedLayer, format: CheckpointFormat): GptqTensors {
  const { rows, cols, bits } = q;
  const G = numGroups(q);
  const qweight = new Int32Array(((cols * bits) / 32) * rows);
  for (let r = 0; r < rows; r++) {
    packStream(
      cols,
      bits,
      (c) => q.codes[r * cols + c]!,
      (w, word) => (qweight[w * rows + r] = word),
    );
  }
  const wordsPerGroup = (rows * bits) / 32;
  const qzeros = new Int32Array(G * wordsPerGroup);
  const off = zeroOffset(format);
  for (let g = 0; g < G; g++) {
    packStream(
      rows,
      bits,
      (r) => q.zeros[r * G + g]! - off,
      (w, word) => (qzeros[g * wordsPerGroup + w] = word),
    );
  }
  const scales = new Uint16Array(G * rows);
  for (let r = 0; r < rows; r++) for (let g = 0; g < G; g++) scales[g * rows + r] = floatToHalf(q.scales[r * G + g]!);
  return { qweight, qzeros, scales, gIdx: Int32Array.from(q.gIdx) };
}

export function unpackLayer(
  t: GptqTensors,
  shape: { rows: number; cols: number; bits: number; groupSize: number; sym: boolean },
  format: CheckpointFormat,
): QuantizedLayer {
  const { rows, cols, bits } = shape;
  const G = t.scales.length / rows;
  const codes = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    unpackStream(
      cols,
      bits,
      (w) => t.qweight[w * rows + r]!,
      (c, v) => (codes[r * cols + c] = v),
    );
  }
  const zeros = new Int32Array(rows * G);
  const wordsPerGroup = (rows * bits) / 32;
  const mask = (1 << bits) - 1;
  const off = zeroOffset(format);
  for (let g = 0; g < G; g++) {
    unpackStream(
      rows,
      bits,
      (w) => t.qzeros[g * wordsPerGroup + w]!,
      (r, v) => (zeros[r * G + g] = (v + off) & mask),
    );
  }
  const scales = new Float32Array(rows * G);
  const wide = halfArrayToFloat(t.scales);
  for (let r = 0; r < rows; r++) for (let g = 0; g < G; g++) scales[r * G + g] = wide[g * rows + r]!;
  return { ...shape, codes, scales, zeros, gIdx: Int32Array.from(t.gIdx) };
}

/**
 * A checkpoint's tensors as the packed kernels take them: the same qweight words, zero points rewritten to
 * gptq_v2's convention when they came as v1, scales widened to float32.
 */
export function packedWeights(
  t: GptqTensors,
  shape: { rows: number; cols: number; bits: number },
  format: CheckpointFormat,
): PackedLinearWeights {
  const { rows, cols, bits } = shape;
  const G = t.scales.length / rows;
  let qzeros = t.qzeros;
  const off = zeroOffset(format);
  if (off !== 0) {
    const wordsPerGroup = (rows * bits) / 32;
    const mask = (1 << bits) - 1;
    qzeros = new Int32Array(t.qzeros.length);
    for (let g = 0; g < G; g++) {
      const zeros = new Int32Array(rows);
      unpackStream(
        rows,
        bits,
        (w) => t.qzeros[g * wordsPerGroup + w]!,
        (r, v) => (zeros[r] = (v + off) & mask),
      );
      packStream(
        rows,
        bits,
        (r) => zeros[r]!,
        (w, word) => (qzeros[g * wordsPerGroup + w] = word),
      );
    }
  }
  // a table lookup: a 7B model has 51M scales, 2.7 s of load through halfToFloat's arithmetic
  const scales = halfArrayToFloat(t.scales);
  return { rows, cols, bits, qweight: t.qweight, qzeros, scales, gIdx: t.gIdx };
}

/**
 * Layers that share their input (q/k/v, gate/up) stacked into one [Σrows, cols] layer, so one kernel call
 * serves them all. Each part's zero-point stream fills whole words, so the streams concatenate word by word.
 * Undefined when the parts differ in bits, columns, groups or g_idx (act-order with different orders).
 */
export function stackPackedRows(parts: PackedLinearWeights[]): PackedLinearWeights | undefined {
  const [first] = parts;
  if (!first) return undefined;
  const G = first.scales.length / first.rows;
  const same = parts.every(
    (p) => p.bits === first.bits && p.cols === first.cols && p.scales.length / p.rows === G && p.gIdx.every((g, c) => g === first.gIdx[c]),
  );
  if (!same) return undefined;
  const rows = parts.reduce((s, p) => s + p.rows, 0);
  const { cols, bits } = first;
  const words = (cols * bits) / 32;
  const qweight = new Int32Array(words * rows);
  const qzeros = new Int32Array((G * rows * bits) / 32);
  const scales = new Float32Array(G * rows);
  let r0 = 0;
  for (const p of parts) {
    const zw = (p.rows * bits) / 32;
    for (let w = 0; w < words; w++) qweight.set(p.qweight.subarray(w * p.rows, (w + 1) * p.rows), w * rows + r0);
    for (let g = 0; g < G; g++) {
      qzeros.set(p.qzeros.subarray(g * zw, (g + 1) * zw), (g * rows * bits) / 32 + (r0 * bits) / 32);
      scales.set(p.scales.subarray(g * p.rows, (g + 1) * p.rows), g * rows + r0);
    }
    r0 += p.rows;
  }
  return { rows, cols, bits, qweight, qzeros, scales, gIdx: first.gIdx };
}
