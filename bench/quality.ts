import { calibrationWindows } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { evaluate, referenceStates, type ReferenceStates } from '../src/eval/perplexity.js';
import { pullStories15m } from '../src/io/stories.js';
import { Llama, type LinearName } from '../src/models/llama.js';
import { loadTokenizer } from '../src/models/load.js';
import { quantizeModel, QUANTIZE_DEFAULTS, type QuantizeOptions } from '../src/quant/quantize-model.js';
import { dequantize } from '../src/quant/quantized-layer.js';
import { getBackend } from '../src/tensor/index.js';
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
  { label: 'w3 per-channel', opts: { bits: 3 } },
  { label: 'w3 g128', opts: { bits: 3, groupSize: 128 } },
  { label: 'w3 g128 act-order', opts: { bits: 3, groupSize: 128, actOrder: true } },
  { label: 'w2 g64', opts: { bits: 2, groupSize: 64 } },
];
const filter = process.argv[2];
const backend = await getBackend();
const dir = await pullStories15m();
const tokenizer = loadTokenizer(dir);
const fp = await Llama.load(dir, backend);
const calib = { windows: calibrationWindows(tokenizer.encode(await loadText('sotu-calib')), 128, 256, 0), seqlen: 256 };
const TEXTS = ['sotu-test', 'moby'];
const tests = new Map<string, { tokens: number[]; ref: ReferenceStates; fpPpl: number }>();
for (const t of TEXTS) {
  const tokens = tokenizer.encode(await loadText(t));
  tests.set(t, { tokens, ref: await referenceStates(fp, tokens), fpPpl: (await evaluate(fp, tokens)).ppl });
}

async function measure(opts: QuantizeOptions): Promise<string[]> {
  const { layers } = await quantizeModel(dir, backend, opts, opts.method === 'gptq' ? calib : undefined);
  const blocks = fp.blocks.map((b, l) => ({
    ...b,
    linear: Object.fromEntries(Object.keys(b.linear).map((n) => [n, dequantize(layers.get(`model.layers.${l}.${n}.weight`)!)])) as Record<
      LinearName,
      Float32Array
    >,
  }));
  const q = new Llama(fp.cfg, backend, fp.embed, blocks, fp.finalNorm, fp.head);
  const cells: string[] = [];
  for (const t of TEXTS) {
    const { tokens, ref } = tests.get(t)!;
    const r = await evaluate(q, tokens, { ref });
    cells.push(r.ppl.toFixed(2), r.kl!.toFixed(4));
  }
  return cells;
}

const rows: string[][] = [['fp32', '-', ...TEXTS.flatMap((t) => [tests.get(t)!.fpPpl.toFixed(2), '0'])]];
// the reference code keeps fp32 scales; this row is the one comparable with its RTN numbers
rows.push(['w4 per-channel (fp32 scales)', 'RTN', ...(await measure({ ...QUANTIZE_DEFAULTS, method: 'rtn', bits: 4, fp16Scales: false }))]);
for (const s of SETTINGS) {
  if (filter && !s.label.includes(filter)) continue;
  for (const method of ['rtn', 'gptq'] as const) {
    const opts = { ...QUANTIZE_DEFAULTS, ...s.opts, method, ...(method === 'rtn' ? { actOrder: false } : {}) };
    rows.push([s.label, method.toUpperCase(), ...(await measure(opts))]);
    console.error(`done: ${s.label} ${method}`);
  }
}
printTable(
  'stories15M quality (protocol; g128 on 288 columns has a partial last group of 32, as in the reference)',
  ['setting', 'method', ...TEXTS.flatMap((t) => [`${t} ppl`, `${t} KL`])],
  rows,
);
