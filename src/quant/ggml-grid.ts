import { roundToHalf } from '../io/fp16.js';
import { BLOCK_LAYOUTS, dequantizeBlock, IQ4_NL_LEVELS, type Block, type BlockType } from '../formats/ggml-blocks.js';
import { roundHalfEven } from './quantizer.js';

/**
 * A llama.cpp block type as GPTQ's grid: when the sweep reaches a block's first column, each row's block factors
 * (fp16 d, m and integer sub-block scales/mins) are fitted to the weights as the sweep has updated them so far,
 * and every column of the block is then rounded to the levels those factors give, computed exactly as llama.cpp
 * dequantizes them. What the sweep evaluated is then what the file holds, bit for bit.
 */

/** The factors of one row's block (codes still empty) and the weights each code means, per sub-block. */
export interface FittedBlock {
  block: Block;
  /** levels[s · 2^bits + q]: the weight of code q in sub-block s */
  levels: Float32Array;
}

const maxCode = (type: BlockType): number => 2 ** BLOCK_LAYOUTS[type].bits - 1;

/** The value of largest magnitude, with its sign (llama.cpp's scales are fitted to it). */
function signedMax(x: ArrayLike<number>, from: number, n: number): number {
  let best = 0;
  for (let i = from; i < from + n; i++) if (Math.abs(x[i]!) > Math.abs(best)) best = x[i]!;
  return best;
}

function minMax(x: ArrayLike<number>, from: number, n: number): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = from; i < from + n; i++) {
    lo = Math.min(lo, x[i]!);
    hi = Math.max(hi, x[i]!);
  }
  return [lo, hi];
}

const clamp = (v: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, v));
const ratio = (a: number, b: number): number => (b === 0 ? 0 : a / b);

/**
 * Fit one block of `type` to the weights x[0 .. size) of one row: min/max (or largest magnitude) per sub-block,
 * sub-block scales and mins quantized against the fp16 super-block factors as the format stores them.
 */
export function fitBlock(type: BlockType, x: ArrayLike<number>): FittedBlock {
  const L = BLOCK_LAYOUTS[type];
  const subs = L.size / L.sub;
  const block: Block = { d: 0, m: 0, scales: new Int32Array(subs), mins: new Int32Array(subs), codes: new Uint8Array(L.size) };
  const q = maxCode(type);
  switch (type) {
    case 'Q4_0':
    case 'Q5_0':
      // codes q − 8 (q − 16): the largest magnitude maps to the most negative code
      block.d = roundToHalf(signedMax(x, 0, 32) / -((q + 1) / 2));
      break;
    case 'Q8_0':
      block.d = roundToHalf(Math.abs(signedMax(x, 0, 32)) / 127);
      break;
    case 'Q4_1':
    case 'Q5_1': {
      const [lo, hi] = minMax(x, 0, 32);
      block.d = roundToHalf((hi - lo) / q);
      block.m = roundToHalf(lo);
      break;
    }
    case 'IQ4_NL':
      block.d = roundToHalf(signedMax(x, 0, 32) / IQ4_NL_LEVELS[0]);
      break;
    case 'Q2_K':
    case 'Q4_K':
    case 'Q5_K': {
      // x = (d·sc)·q − dmin·m with m ≥ 0: each sub-block spans [min(lo, 0), hi]
      const scale = new Float64Array(subs);
      const low = new Float64Array(subs);
      for (let s = 0; s < subs; s++) {
        const [lo, hi] = minMax(x, s * L.sub, L.sub);
        low[s] = -Math.min(lo, 0);
        scale[s] = (hi + low[s]!) / q;
      }
      const top = 2 ** L.scaleBits - 1;
      block.d = roundToHalf(Math.max(...scale) / top);
      block.m = roundToHalf(Math.max(...low) / top);
      for (let s = 0; s < subs; s++) {
        block.scales[s] = clamp(roundHalfEven(ratio(scale[s]!, block.d)), 0, top);
        block.mins[s] = clamp(roundHalfEven(ratio(low[s]!, block.m)), 0, top);
      }
      break;
    }
    case 'Q3_K':
    case 'Q6_K': {
      // symmetric sub-blocks (codes q − 4, q − 32), their scales signed integers times d
      const half = (q + 1) / 2;
      const scale = Array.from({ length: subs }, (_, s) => signedMax(x, s * L.sub, L.sub) / -half);
      const [lo, hi, offset] = type === 'Q3_K' ? [-32, 31, 32] : [-128, 127, 0];
      block.d = roundToHalf(signedMax(scale, 0, subs) / lo);
      for (let s = 0; s < subs; s++) block.scales[s] = clamp(roundHalfEven(ratio(scale[s]!, block.d)), lo, hi) + offset;
      break;
    }
  }
  return { block, levels: levelsOf(type, block) };
}

/**
 * The weight of every code in every sub-block, by llama.cpp's own arithmetic (dequantizeBlock). A weight depends
 * only on its code and its sub-block, so a probe block whose sub-blocks each hold a run of consecutive codes gives
 * L.sub levels of every sub-block per dequantization (one call for 4-bit K-quants, 8 for Q8_0's 256 codes).
 */
function levelsOf(type: BlockType, b: Block): Float32Array {
  const L = BLOCK_LAYOUTS[type];
  const n = maxCode(type) + 1;
  const subs = L.size / L.sub;
  const levels = new Float32Array(subs * n);
  const probe: Block = { ...b, codes: new Uint8Array(L.size) };
  const out = new Float32Array(L.size);
  const run = Math.min(n, L.sub);
  for (let base = 0; base < n; base += run) {
    for (let i = 0; i < L.size; i++) probe.codes[i] = base + ((i % L.sub) % run);
    dequantizeBlock(type, probe, out);
    for (let s = 0; s < subs; s++) levels.set(out.subarray(s * L.sub, s * L.sub + run), s * n + base);
  }
  return levels;
}

/**
 * The code whose level is nearest to x, the lowest such code on a tie (what a scan over the codes in order finds),
 * among n levels from `at`. Every type's levels are monotonic in the code (ascending, or descending when the
 * block's factor is negative), so the distance falls to the crossing of x and rises after it: a binary search finds
 * the crossing, and the codes at the same least distance lie just below it (equal levels, or x halfway between two).
 */
export function nearestCode(levels: Float32Array, at: number, n: number, x: number): number {
  const up = levels[at + n - 1]! >= levels[at]!;
  // the first code at or past x in the levels' direction
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (up ? levels[at + mid]! >= x : levels[at + mid]! <= x) hi = mid;
    else lo = mid + 1;
  }
  let best = lo === n || (lo > 0 && Math.abs(levels[at + lo - 1]! - x) <= Math.abs(levels[at + lo]! - x)) ? lo - 1 : lo;
  const dist = Math.abs(levels[at + best]! - x);
  while (best > 0 && Math.abs(levels[at + best - 1]! - x) === dist) best--;
  return best;
}

/**
 * Round-to-nearest in the type's blocks (the baseline, and tensors GPTQ does not sweep): each block fitted to the
 * row's weights, each weight to its nearest level. Returns the blocks with their codes and the weights they mean.
 */
export function roundToBlocks(type: BlockType, row: Float32Array): { blocks: Block[]; values: Float32Array } {
  const L = BLOCK_LAYOUTS[type];
  const n = maxCode(type) + 1;
  const values = new Float32Array(row.length);
  const blocks: Block[] = [];
  for (let at = 0; at < row.length; at += L.size) {
    const { block, levels } = fitBlock(type, row.subarray(at, at + L.size));
    for (let i = 0; i < L.size; i++) {
      const s = Math.floor(i / L.sub);
      const code = nearestCode(levels, s * n, n, row[at + i]!);
      block.codes[i] = code;
      values[at + i] = levels[s * n + code]!;
    }
    blocks.push(block);
  }
  return { blocks, values };
}
