import { calibrationWindows } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadTokenizer } from '../src/models/load.js';
import { gptq, GPTQ_REFERENCE } from '../src/quant/gptq.js';
import { quantizeModel, QUANTIZE_REFERENCE } from '../src/quant/quantize-model.js';
import { getBackend } from '../src/tensor/index.js';
import { seededRandom } from '../src/calib/windows.js';
import { printTable } from './table.js';

/**
 * Wall time to GPTQ-quantize stories15M on the protocol (w4 g128, 128 x 256 calibration tokens) and its split,
 * then single-layer GPTQ sweeps on random weights of real large-model shapes (`-- --large` adds 4096 x 4096
 * and 11008 x 4096).
 */
const backend = await getBackend();
const dir = await pullStories15m();
const tokens = loadTokenizer(dir).encode(await loadText('sotu-calib'));
const calib = { windows: calibrationWindows(tokens, 128, 256, 0), seqlen: 256 };
const { timings: t } = await quantizeModel(dir, backend, { ...QUANTIZE_REFERENCE, bits: 4, groupSize: 128 }, calib);
printTable(
  'Quantize stories15M, w4 g128, 128 x 256 tokens (reference PyTorch GPTQ: about 60 s on this 2-core machine)',
  ['total s', 'forward s', 'Hessians s', 'sweeps s'],
  [[t.total.toFixed(1), t.forward.toFixed(1), t.hessian.toFixed(1), t.sweep.toFixed(1)]],
);

const shapes: [number, number][] = [
  [1024, 1024],
  [2048, 2048],
];
if (process.argv.includes('--large')) shapes.push([4096, 4096], [11008, 4096]);
const rand = seededRandom(1);
const rows: string[][] = [];
for (const [out, cols] of shapes) {
  const w = Float32Array.from({ length: out * cols }, () => rand() - 0.5);
  // H from `cols` random-ish tokens: 2/n XᵀX with a shared component so it is not diagonal-dominant
  const n = cols;
  const x = Float32Array.from({ length: n * cols }, (_, i) => rand() - 0.5 + (i % 7 === 0 ? 0.3 : 0));
  const g = await backend.gram(x, n, cols);
  const h = Float64Array.from(g, (v) => (2 / n) * v);
  const t0 = performance.now();
  await gptq(
    w,
    h,
    out,
    cols,
    { ...GPTQ_REFERENCE, bits: 4, groupSize: 128 },
    { matmulNT: backend.matmulNT, matmulNN: backend.matmulNN, matmul64: backend.matmul64 },
  );
  const s = (performance.now() - t0) / 1000;
  // factorization 2n³/3 (Cholesky + triangular inverse) plus the column updates, rows·cols² multiply-adds
  const flop = (2 * cols ** 3) / 3 + 2 * out * cols * (cols / 2);
  rows.push([`${out} x ${cols}`, s.toFixed(2), (flop / s / 1e9).toFixed(2)]);
}
printTable(
  'One GPTQ sweep (w4 g128) of a random layer: blocked float64 factorization (gemms on the backend), TypeScript column loop, lazy updates on the backend',
  ['layer', 'seconds', 'GFLOP/s'],
  rows,
);
