import type { GptqOptions } from './gptq.js';
import { fitGrid, quantizeValue } from './quantizer.js';
import { factorsPerBlock, numGroups, putFactors, type QuantizedLayer } from './quantized-layer.js';
import { BLOCK_LAYOUTS, GGML_TYPES, typeForRows, type BlockType } from '../formats/ggml-blocks.js';
import { roundToBlocks } from './ggml-grid.js';

/** Round-to-nearest on the same grid and group layout: the baseline every table shows beside GPTQ. */
export function rtn(
  weight: Float32Array,
  rows: number,
  cols: number,
  opts: Pick<GptqOptions, 'bits' | 'sym' | 'mse' | 'fp16Scales' | 'groupSize' | 'blockType'>,
): QuantizedLayer {
  if (opts.blockType) return rtnBlocks(weight, rows, cols, typeForRows(opts.blockType, cols));
  const gs = opts.groupSize;
  const layer: QuantizedLayer = {
    rows,
    cols,
    bits: opts.bits,
    groupSize: gs,
    sym: opts.sym,
    codes: new Uint8Array(rows * cols),
    scales: new Float32Array(rows * numGroups({ cols, groupSize: gs })),
    zeros: new Int32Array(rows * numGroups({ cols, groupSize: gs })),
    gIdx: Int32Array.from({ length: cols }, (_, c) => (gs > 0 ? Math.floor(c / gs) : 0)),
  };
  const G = numGroups(layer);
  const width = gs > 0 ? gs : cols;
  const maxq = 2 ** opts.bits - 1;
  for (let g = 0; g < G; g++) {
    const c0 = g * width;
    const c1 = Math.min(c0 + width, cols);
    const grid = fitGrid(weight, rows, cols, c0, c1 - c0, opts);
    for (let r = 0; r < rows; r++) {
      layer.scales[r * G + g] = grid.scale[r]!;
      layer.zeros[r * G + g] = grid.zero[r]!;
      for (let c = c0; c < c1; c++) layer.codes[r * cols + c] = quantizeValue(weight[r * cols + c]!, grid.scale[r]!, grid.zero[r]!, maxq);
    }
  }
  return layer;
}

/** Round-to-nearest in a llama.cpp block type, row by row. */
export function rtnBlocks(weight: Float32Array, rows: number, cols: number, type: BlockType): QuantizedLayer {
  const codes = new Uint8Array(rows * cols);
  const size = BLOCK_LAYOUTS[type].size;
  // factors packed as each row is rounded: an 8B head is two million blocks, too many to hold as objects
  const blockFactors = new Float32Array(((rows * cols) / size) * factorsPerBlock(type));
  let k = 0;
  for (let r = 0; r < rows; r++) {
    for (const b of roundToBlocks(type, weight.subarray(r * cols, (r + 1) * cols)).blocks) {
      codes.set(b.codes, k * size);
      putFactors(type, b, blockFactors, k++);
    }
  }
  return {
    rows,
    cols,
    bits: BLOCK_LAYOUTS[type].bits,
    groupSize: -1,
    sym: false,
    codes,
    scales: new Float32Array(rows),
    zeros: new Int32Array(rows),
    gIdx: new Int32Array(cols),
    ggmlType: GGML_TYPES[type],
    blockFactors,
  };
}
