import { QUANTIZE_REFERENCE, type QuantizeOptions } from '../src/quant/quantize-model.js';
import { protocol } from './protocol.js';
import { printTable } from './table.js';

/**
 * fp32 / RTN / GPTQ perplexity (sotu-test, moby) and KL vs fp32 on the protocol: stories15M, 128 calibration
 * windows of 256 tokens from sotu-calib (seed 0), first 128 windows of 256 tokens of each test text.
 * `npm run bench:quality -- w4` runs only the settings whose label contains "w4".
 */
interface Setting {
  label: string;
  opts: Partial<QuantizeOptions>;
}
const SETTINGS: Setting[] = [
  { label: 'w4 per-channel', opts: { bits: 4 } },
  { label: 'w4 g128', opts: { bits: 4, groupSize: 128 } },
  { label: 'w4 g128 act-order', opts: { bits: 4, groupSize: 128, actOrder: true } },
  { label: 'w4 g128 sym', opts: { bits: 4, groupSize: 128, sym: true } },
  // the head quantized too, on the same grid (stories15M's head is its embedding: an untied copy, the same model)
  { label: 'w4 g128 sym --lm-head', opts: { bits: 4, groupSize: 128, sym: true, lmHead: true } },
  { label: 'w3 per-channel', opts: { bits: 3 } },
  { label: 'w3 g128', opts: { bits: 3, groupSize: 128 } },
  { label: 'w3 g128 act-order', opts: { bits: 3, groupSize: 128, actOrder: true } },
  { label: 'w2 g64', opts: { bits: 2, groupSize: 64 } },
];
const filter = process.argv[2];
const { measure, header, fpRow } = await protocol();

const rows: string[][] = [['fp32', '-', ...fpRow]];
// the reference code keeps fp32 scales; this row is the one comparable with its RTN numbers
rows.push([
  'w4 per-channel (fp32 scales)',
  'RTN',
  ...(await measure({ ...QUANTIZE_REFERENCE, method: 'rtn', bits: 4, fp16Scales: false })),
]);
for (const s of SETTINGS) {
  if (filter && !s.label.includes(filter)) continue;
  for (const method of ['rtn', 'gptq'] as const) {
    const opts = { ...QUANTIZE_REFERENCE, ...s.opts, method, ...(method === 'rtn' ? { actOrder: false } : {}) };
    rows.push([s.label, method.toUpperCase(), ...(await measure(opts))]);
    console.error(`done: ${s.label} ${method}`);
  }
}
printTable(
  'stories15M quality (protocol; g128 on 288 columns has a partial last group of 32, as in the reference)',
  ['setting', 'method', ...header],
  rows,
);
