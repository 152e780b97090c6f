import { BLOCK_LAYOUTS, dequantizeBlock, type Block, type BlockType } from '../formats/ggml-blocks.js';

/**
 * One quantized linear layer, the single data type every format writer consumes: integer codes, per-group
 * scales and zero points, and g_idx (the group of each input column). Weight layout is [rows=out, cols=in].
 * The float weight it stands for is scale[r, g_idx[c]] · (code[r, c] − zero[r, g_idx[c]]), or, on a llama.cpp block
 * grid (`blocks`), what each block's factors make of its codes.
 */
export interface QuantizedLayer {
  rows: number;
  cols: number;
  bits: number;
  /** columns per group; -1 = one group per row */
  groupSize: number;
  sym: boolean;
  /** [rows, cols], values 0..2^bits-1 */
  codes: Uint8Array;
  /** [rows, groups], exactly representable in fp16 */
  scales: Float32Array;
  /** [rows, groups] */
  zeros: Int32Array;
  /** [cols] */
  gIdx: Int32Array;
  /** a llama.cpp block type's grid: each row's blocks in order, [rows · cols / block size] (codes in `codes`) */
  blocks?: { type: BlockType; factors: Block[] };
}

export function numGroups(q: Pick<QuantizedLayer, 'cols' | 'groupSize'>): number {
  return q.groupSize > 0 ? Math.ceil(q.cols / q.groupSize) : 1;
}

export function dequantize(q: QuantizedLayer): Float32Array {
  const { rows, cols, codes, scales, zeros, gIdx } = q;
  const G = numGroups(q);
  const out = new Float32Array(rows * cols);
  if (q.blocks) {
    const { type, factors } = q.blocks;
    const size = BLOCK_LAYOUTS[type].size;
    factors.forEach((b, k) => dequantizeBlock(type, { ...b, codes: codes.subarray(k * size, (k + 1) * size) }, out, k * size));
    return out;
  }
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const g = r * G + gIdx[c]!;
      out[r * cols + c] = scales[g]! * (codes[r * cols + c]! - zeros[g]!);
    }
  }
  return out;
}
