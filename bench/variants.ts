import { QUANTIZE_REFERENCE, quantizeModel, type QuantizeOptions } from '../src/quant/quantize-model.js';
import { babaiNearestPlane } from '../src/quant/babai.js';
import { gptq } from '../src/quant/gptq.js';
import { fitGrid } from '../src/quant/quantizer.js';
import { upperCholeskyOfInverse } from '../src/tensor/cholesky.js';
import { protocol } from './protocol.js';
import { printTable } from './table.js';

/**
 * Beyond the paper (seeds 001, 003): at 4, 3 and 2 bits, RTN / GPTQ / act-order / reverse (Babai) order /
 * GPTQv2 / GPTQT on the protocol; then the Babai error bound's tightness on real layers.
 * 4 and 3 bits per-channel, 2 bits with groups of 64 (per-channel 2-bit is unusable for every method);
 * GPTQT has no groups, so its 2-bit row is per-channel. `npm run bench:variants -- w3` filters rows.
 */
const filter = process.argv[2];
const { backend, dir, calib, measure, header, fpRow } = await protocol();

const METHODS: [string, Partial<QuantizeOptions>][] = [
  ['RTN', { method: 'rtn' }],
  ['GPTQ', { method: 'gptq' }],
  ['GPTQ act-order', { method: 'gptq', actOrder: true }],
  ['GPTQ reverse (Babai)', { method: 'gptq', order: 'reverse' }],
  ['GPTQv2', { method: 'gptqv2' }],
  ['GPTQT', { method: 'gptqt' }],
];
const rows: string[][] = [['fp32', '-', ...fpRow]];
for (const bits of [4, 3, 2]) {
  const label = bits === 2 ? 'w2 g64' : `w${bits} per-channel`;
  if (filter && !label.includes(filter)) continue;
  for (const [name, m] of METHODS) {
    if (m.method === 'gptqt' && bits === 4) continue; // GPTQT codes 3 or 2 bits
    const groupSize = bits === 2 && m.method !== 'gptqt' ? 64 : -1;
    rows.push([
      m.method === 'gptqt' && bits === 2 ? 'w2 per-channel' : label,
      name,
      ...(await measure({ ...QUANTIZE_REFERENCE, bits, groupSize, ...m })),
    ]);
    console.error(`done: ${label} ${name}`);
  }
}
printTable('stories15M: GPTQ variants on the protocol', ['setting', 'method', ...header], rows);

// Babai bound: back-to-front GPTQ's H-norm error per row vs ¼·Σ s²/U_ii², rows without clipping
const bound: string[][] = [];
const captured: { name: string; w: Float32Array; h: Float64Array; rows: number; cols: number }[] = [];
await quantizeModel(dir, backend, { ...QUANTIZE_REFERENCE, bits: 4 }, calib, undefined, undefined, (name, w, h, q) => {
  if (/layers\.(0|3|5)\.(self_attn\.q_proj|mlp\.down_proj)/.test(name)) captured.push({ name, w, h: h!, rows: q.rows, cols: q.cols });
});
for (const bits of [4, 3]) {
  for (const { name, w, h, rows: R, cols: C } of captured) {
    const opts = { ...QUANTIZE_REFERENCE, bits, order: 'reverse' as const };
    const grid = fitGrid(w, R, C, 0, C, opts);
    const codes = (await gptq(w, h, R, C, opts)).layer.codes;
    let mean = 0;
    for (let i = 0; i < C; i++) mean += h[i * C + i]! / C;
    const hd = Float64Array.from(h, (v, k) => (k % (C + 1) === 0 ? v + opts.percdamp * mean : v));
    const rev = Float64Array.from({ length: C * C }, (_, k) => hd[(C - 1 - Math.floor(k / C)) * C + (C - 1 - (k % C))]!);
    const U = upperCholeskyOfInverse(rev, C)!;
    let invU2 = 0;
    for (let i = 0; i < C; i++) invU2 += 1 / U[i * C + i]! ** 2;
    const babai = babaiNearestPlane(w, R, C, hd, grid.scale, grid.zero);
    const ratios: number[] = [];
    let same = 0;
    for (let r = 0; r < R; r++) {
      const k = babai.subarray(r * C, (r + 1) * C);
      if (k.some((v) => v < 0 || v > 2 ** bits - 1)) continue;
      if (k.every((v, c) => v === codes[r * C + c])) same++;
      const s = grid.scale[r]!;
      const e = Float64Array.from({ length: C }, (_, c) => w[r * C + c]! - s * (codes[r * C + c]! - grid.zero[r]!));
      let err = 0;
      for (let i = 0; i < C; i++) for (let j = 0; j < C; j++) err += e[i]! * hd[i * C + j]! * e[j]!;
      ratios.push(err / (0.25 * s * s * invU2));
    }
    const meanRatio = ratios.reduce((a, b) => a + b, 0) / ratios.length;
    bound.push([
      name.replace('model.layers.', 'L').replace('.weight', ''),
      `w${bits}`,
      `${ratios.length}/${R}`,
      `${same}/${ratios.length}`,
      meanRatio.toFixed(3),
      Math.max(...ratios).toFixed(3),
    ]);
  }
}
printTable(
  'Babai bound on real layers: back-to-front GPTQ, rows without clipping',
  ['layer', 'bits', 'rows unclipped', 'codes = Babai', 'mean err/bound', 'max err/bound'],
  bound,
);
