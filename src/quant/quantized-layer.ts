import { BLOCK_LAYOUTS, dequantizeBlock, GGML_TYPES, type Block, type BlockType } from '../formats/ggml-blocks.js';

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
  /**
   * On a llama.cpp block grid (GGUF export): its GGML type id, and each block's factors (blocks in row-major order;
   * per block d, m, then every sub-block's scale and min). Flat, as every other field, so layers spill to disk as is.
   */
  ggmlType?: number;
  blockFactors?: Float32Array;
}

const TYPE_OF_ID = new Map(Object.entries(GGML_TYPES).map(([name, id]) => [id as number, name as BlockType]));

/** The block type of a layer on a block grid. */
export function blockTypeOf(q: QuantizedLayer): BlockType | undefined {
  return q.ggmlType === undefined ? undefined : TYPE_OF_ID.get(q.ggmlType);
}

export const factorsPerBlock = (type: BlockType): number => 2 + (2 * BLOCK_LAYOUTS[type].size) / BLOCK_LAYOUTS[type].sub;

/** Block k of a layer on a block grid, with its codes. */
export function layerBlock(q: QuantizedLayer, k: number): Block {
  const type = blockTypeOf(q)!;
  const L = BLOCK_LAYOUTS[type];
  const subs = L.size / L.sub;
  const f = q.blockFactors!.subarray(k * factorsPerBlock(type), (k + 1) * factorsPerBlock(type));
  return {
    d: f[0]!,
    m: f[1]!,
    scales: Int32Array.from(f.subarray(2, 2 + subs)),
    mins: Int32Array.from(f.subarray(2 + subs, 2 + 2 * subs)),
    codes: q.codes.subarray(k * L.size, (k + 1) * L.size),
  };
}

/** The flat factors of blocks (see QuantizedLayer.blockFactors). */
export function packFactors(type: BlockType, blocks: readonly Block[]): Float32Array {
  const out = new Float32Array(blocks.length * factorsPerBlock(type));
  blocks.forEach((b, k) => putFactors(type, b, out, k));
  return out;
}

/** Block k's factors into flat factors `out`. */
export function putFactors(type: BlockType, b: Block, out: Float32Array, k: number): void {
  const n = factorsPerBlock(type);
  out[k * n] = b.d;
  out[k * n + 1] = b.m;
  out.set(b.scales, k * n + 2);
  out.set(b.mins, k * n + 2 + b.scales.length);
}

export function numGroups(q: Pick<QuantizedLayer, 'cols' | 'groupSize'>): number {
  return q.groupSize > 0 ? Math.ceil(q.cols / q.groupSize) : 1;
}

export function dequantize(q: QuantizedLayer): Float32Array {
  const { rows, cols, codes, scales, zeros, gIdx } = q;
  const G = numGroups(q);
  const out = new Float32Array(rows * cols);
  const type = blockTypeOf(q);
  if (type) {
    const size = BLOCK_LAYOUTS[type].size;
    for (let k = 0; k < (rows * cols) / size; k++) dequantizeBlock(type, layerBlock(q, k), out, k * size);
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
