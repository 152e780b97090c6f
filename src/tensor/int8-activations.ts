/**
 * Activations quantized to int8 per block of columns, as llama.cpp's Q8_0 does for its Q4_0·Q8_0 dot: each block's
 * scale is its largest magnitude over 127, each value rounded to the nearest multiple of it (Math.round: halves
 * upward). `order` reads the columns in a kernel's order (act-order layers); `sum` is scale·Σ codes, the block's
 * term against a zero point.
 */
export interface Int8Blocks {
  codes: Int8Array;
  scale: Float32Array;
  sum: Float32Array;
}

export function quantizeInt8Blocks(x: Float32Array, blockSize: number, out: Int8Blocks, order?: Int32Array): void {
  const cols = out.codes.length;
  for (let b = 0, c0 = 0; c0 < cols; b++, c0 += blockSize) {
    const c1 = Math.min(c0 + blockSize, cols);
    let max = 0;
    for (let c = c0; c < c1; c++) max = Math.max(max, Math.abs(x[order ? order[c]! : c]!));
    const scale = Math.fround(max / 127);
    let sum = 0;
    for (let c = c0; c < c1; c++) {
      const q = scale === 0 ? 0 : Math.round(x[order ? order[c]! : c]! / scale);
      out.codes[c] = q;
      sum += q;
    }
    out.scale[b] = scale;
    out.sum[b] = scale * sum;
  }
}

export const int8Blocks = (cols: number, blockSize: number): Int8Blocks => {
  const blocks = Math.ceil(cols / blockSize);
  return { codes: new Int8Array(cols), scale: new Float32Array(blocks), sum: new Float32Array(blocks) };
};
