import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { seededRandom } from '../src/calib/windows.js';
import * as modelsNow from '../src/models/index.js';
import * as ortNow from '../src/tensor/ort.js';
import { baselineTree } from './baseline.js';
import { printTable } from './table.js';

/**
 * One Llama-2-7B-shaped block's forward over a 2048-position window, the calibration's unit of work, and the
 * parts of it outside the big products: attention over the window, and o_proj's product with its residual update.
 * The checkpoint is bench:scale's random one-layer 7B shape (made once into --dir).
 *
 *   npm run bench:forward [-- --baseline REV] [--dir DIR]
 *
 * `--baseline REV` runs the same calls on the source tree of git revision REV in the same process, alternating with
 * this tree's. Times are the best of REPS, beside an sgemm read in the same process.
 */
const REPS = 6;
const SEQ = 2048;
const { values: flags } = parseArgs({ options: { baseline: { type: 'string' }, dir: { type: 'string' } } });
const root = resolve(import.meta.dirname, '..');
const work = flags.dir ?? mkdtempSync(join(tmpdir(), 'gptq-ts-forward-'));
const dir = join(work, 'llama2-7b-1l');
if (!existsSync(join(dir, 'model.safetensors'))) {
  const make = JSON.stringify({ case: 'llama2-7b', dir, layers: '1' });
  const r = spawnSync(process.execPath, [...process.execArgv, 'bench/scale.ts', '--child', 'make', make], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`making the checkpoint in ${dir} failed`);
}

interface Tree {
  label: string;
  ort: typeof ortNow;
  model: modelsNow.Decoder<modelsNow.BlockWeights>;
}
const trees: Tree[] = [];
const baseline = flags.baseline === undefined ? undefined : baselineTree(flags.baseline);
if (baseline) {
  const ort = await baseline.load<typeof ortNow>('src/tensor/ort.ts');
  const models = await baseline.load<typeof modelsNow>('src/models/index.ts');
  trees.push({ label: baseline.rev, ort, model: await models.Decoder.load(dir, ort.ortBackend) });
}
trees.push({ label: 'this tree', ort: ortNow, model: await modelsNow.Decoder.load(dir, ortNow.ortBackend) });

const rand = seededRandom(1);
const random = (n: number): Float32Array => Float32Array.from({ length: n }, () => rand() - 0.5);
const { cfg } = trees[0]!.model;
const D = cfg.hiddenSize;
const x = random(SEQ * D);
const qkv = random(SEQ * cfg.numHeads * cfg.headDim);
const att = random(SEQ * cfg.numHeads * cfg.headDim);
const shape = { batch: 1, seq: SEQ, ctx: SEQ, heads: cfg.numHeads, kvHeads: cfg.numKvHeads, headDim: cfg.headDim };
const sg = random(SEQ * SEQ);
let sgemm = 0;

const calls: [string, (t: Tree) => Promise<unknown>][] = [
  ['attention, ms', (t) => t.ort.ortBackend.attention(qkv, qkv, qkv, shape)],
  ['o_proj with its residual update, ms', (t) => t.model.addProjection(t.model.blocks[0]!, 'o', x.slice(), att, SEQ)],
  ['block, ms', (t) => t.model.block(t.model.blocks[0]!, 0, x.slice(), 1, SEQ)],
];
const best = calls.map(() => trees.map(() => Infinity));
for (let rep = 0; rep < REPS; rep++) {
  let t0 = performance.now();
  await ortNow.ortBackend.matmulNT(sg, sg, SEQ, SEQ, SEQ);
  sgemm = Math.max(sgemm, (2 * SEQ ** 3) / (performance.now() - t0) / 1e6);
  const order = rep % 2 ? [...trees.keys()].reverse() : [...trees.keys()];
  for (const k of order) {
    for (const [c, [, fn]] of calls.entries()) {
      t0 = performance.now();
      await fn(trees[k]!);
      best[c]![k] = Math.min(best[c]![k]!, performance.now() - t0);
    }
  }
}
const rows = calls.map(([label], c) => {
  const ms = best[c]!;
  return [label, ...ms.map((v) => v.toFixed(0)), ...(ms.length === 2 ? [`${(ms[0]! / ms[1]!).toFixed(2)}x`] : [])];
});
rows.unshift(['sgemm 2048^3 (onnxruntime), GFLOP/s', ...trees.map(() => sgemm.toFixed(0)), ...(trees.length === 2 ? [''] : [])]);
printTable(
  `Llama-2-7B-shaped block forward over ${SEQ} positions, best of ${REPS}${flags.baseline ? ', the trees alternating' : ''}`,
  ['', ...trees.map((t) => t.label), ...(trees.length === 2 ? ['speedup'] : [])],
  rows,
);
baseline?.remove();
if (!flags.dir) rmSync(work, { recursive: true, force: true });
