import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import { pullStories15m } from '../src/io/stories.js';
import { GPTQ_REFERENCE } from '../src/quant/gptq.js';
import { binaryLevel, dequantizeBinary, fitBinaryCoding, fitRowCodings, gptqt } from '../src/quant/gptqt.js';
import { tempDir } from './helpers/temp.js';

test('binary coding recovers values it can represent exactly', async () => {
  // β = 0.5, α = (2, 1): levels −2.5, −0.5, 1.5, 3.5
  const u = Float64Array.from([-2.5, -0.5, 1.5, 3.5]);
  const fit = fitBinaryCoding(u, Float64Array.from([3, 1, 2, 5]), 2);
  assert.ok(fit.error < 1e-18, `error ${fit.error}`);
  const levels = Array.from({ length: 4 }, (_, c) => binaryLevel(c, fit.alpha, fit.beta, 2)).sort((a, b) => a - b);
  levels.forEach((v, i) => assert.ok(Math.abs(v - u[i]!) < 1e-9));
});

test('alternating least squares improves on the greedy binary coding', async () => {
  const u = Float64Array.from({ length: 16 }, (_, i) => i - 7);
  const n = Float64Array.from(u, (v) => Math.exp(-(v * v) / 20));
  const fit = fitBinaryCoding(u, n, 2);
  // greedy alone: β = weighted mean, α_j = mean |residual| in turn
  const total = n.reduce((a, b) => a + b, 0);
  const beta = u.reduce((a, v, i) => a + v * n[i]!, 0) / total;
  const resid = Float64Array.from(u, (v) => v - beta);
  const alpha: number[] = [];
  for (let j = 0; j < 2; j++) {
    alpha.push(resid.reduce((a, r, i) => a + Math.abs(r) * n[i]!, 0) / total);
    resid.forEach((r, i) => (resid[i] = r - Math.sign(r) * alpha[j]!));
  }
  const greedyErr = u.reduce((a, v, i) => a + n[i]! * Math.min(...[0, 1, 2, 3].map((c) => (v - binaryLevel(c, alpha, beta, 2)) ** 2)), 0);
  assert.ok(fit.error <= greedyErr + 1e-12, `${fit.error} vs greedy ${greedyErr}`);
});

test('with a diagonal Hessian GPTQT rounds each weight to the nearest of its row levels', async () => {
  const rand = seededRandom(3);
  const rows = 4;
  const cols = 64;
  const w = Float32Array.from({ length: rows * cols }, () => (rand() - 0.5) * (1 + rand()));
  const h = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) h[i * cols + i] = 1 + (i % 5);
  const opts = { ...GPTQ_REFERENCE, bits: 3, highBits: 5 };
  const { levels } = fitRowCodings(w, rows, cols, opts);
  const deq = dequantizeBinary((await gptqt(w, h, rows, cols, opts)).layer);
  for (let r = 0; r < rows; r++) {
    const lv = levels.values.subarray(r * 8, (r + 1) * 8);
    for (let c = 0; c < cols; c++) {
      const x = w[r * cols + c]!;
      const nearest = Math.min(...Array.from(lv, (v) => Math.abs(v - x)));
      assert.ok(Math.abs(Math.abs(deq[r * cols + c]! - x) - nearest) < 1e-6, `row ${r} col ${c}`);
    }
  }
});

const cli = (...a: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', ...a], { encoding: 'utf8' });

test('gptq quantize --method gptqt writes its own format that eval and inspect read', async () => {
  const model = await pullStories15m();
  const out = join(tempDir('gptqt-'), 'm');
  const q = cli('quantize', model, '--method', 'gptqt', '--bits', '3', '--format', 'gptqt', '--nsamples', '8', '--out', out);
  assert.equal(q.status, 0, q.stderr);
  const e = cli('eval', out, '--windows', '2', '--ref', model, '--json');
  assert.equal(e.status, 0, e.stderr);
  const r = JSON.parse(e.stdout);
  assert.ok(r.kl > 0 && r.top1 > 0.2, `kl ${r.kl} top1 ${r.top1}`);
  // its layers are held dequantized to float32: over the loaded-size limit, eval streams it (and the reference) to
  // the same figures
  const streamed = spawnSync(
    process.execPath,
    ['--import', 'tsx', 'src/cli/entry.ts', 'eval', out, '--windows', '2', '--ref', model, '--json'],
    {
      encoding: 'utf8',
      env: { ...process.env, GPTQ_TS_MAX_LOADED_GB: '0.01' },
    },
  );
  assert.equal(streamed.status, 0, streamed.stderr);
  const s = JSON.parse(streamed.stdout);
  assert.equal(s.streamed, true);
  assert.match(streamed.stderr, /gptq-ts would hold 0\.0239 GB of its weights \(its binary-coded linear layers dequantized to float32\)/);
  assert.deepEqual([s.ppl, s.kl, s.top1], [r.ppl, r.kl, r.top1]);
  const i = JSON.parse(cli('inspect', out, '--json').stdout);
  assert.equal(i.quantization.method, 'gptqt');
  assert.ok(i.bitsPerWeight > 3 && i.bitsPerWeight < 3.5, `${i.bitsPerWeight}`);
});

test('gptqt refuses what it does not support', async () => {
  const out = join(tempDir('gptqt-bad-'), 'm');
  for (const [args, msg] of [
    [['--bits', '4', '--format', 'gptqt'], /codes 2 or 3 bits/],
    [['--bits', '3', '--group-size', '64', '--format', 'gptqt'], /no --group-size/],
    [['--bits', '3', '--format', 'gptq'], /use --format gptqt/],
    [['--bits', '3', '--format', 'gptqt', '--high-bits', '3'], /--high-bits 3 must be an integer in 4\.\.8/],
  ] as [string[], RegExp][]) {
    const r = cli('quantize', 'stories15m', '--method', 'gptqt', '--out', out, ...args);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr.trim(), msg);
  }
});
