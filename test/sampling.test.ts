import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { generate } from '../src/infer/generate.js';
import { argmax, makeSampler } from '../src/infer/sampling.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadModel } from '../src/models/load.js';

const logits = Float32Array.from([1, 3, 2, 0.5, 2.9]);

test('temperature 0 is argmax; top-k 1 is argmax at any temperature', () => {
  assert.equal(makeSampler({})(logits), argmax(logits));
  for (let s = 0; s < 20; s++) assert.equal(makeSampler({ temperature: 5, topK: 1, seed: s })(logits), 1);
});

test('sampling follows softmax(logits/T) and respects top-k and top-p', () => {
  const counts = new Array(5).fill(0);
  const sample = makeSampler({ temperature: 1, seed: 7 });
  const N = 20000;
  for (let i = 0; i < N; i++) counts[sample(logits)]++;
  const z = Array.from(logits).reduce((a, l) => a + Math.exp(l), 0);
  counts.forEach((c, i) => assert.ok(Math.abs(c / N - Math.exp(logits[i]!) / z) < 0.015, `token ${i}: ${c / N}`));
  const topK = makeSampler({ temperature: 1, topK: 2, seed: 1 });
  for (let i = 0; i < 500; i++) assert.ok([1, 4].includes(topK(logits)));
  // p(1) ≈ 0.41, p(4) ≈ 0.37: top-p 0.5 keeps exactly these two
  const topP = makeSampler({ temperature: 1, topP: 0.5, seed: 2 });
  for (let i = 0; i < 500; i++) assert.ok([1, 4].includes(topP(logits)));
  assert.deepEqual(
    Array.from({ length: 10 }, () => makeSampler({ temperature: 1, seed: 3 })(logits)),
    Array.from({ length: 10 }, () => makeSampler({ temperature: 1, seed: 3 })(logits)),
    'a seed fixes the choice',
  );
});

test('sampled generation is reproducible with a seed and differs from greedy', async () => {
  const { model, tokenizer } = await loadModel(await pullStories15m());
  const prompt = tokenizer.encode('Once upon a time');
  const a = await generate(model, prompt, { maxTokens: 30, temperature: 1, seed: 5 });
  const b = await generate(model, prompt, { maxTokens: 30, temperature: 1, seed: 5 });
  const g = await generate(model, prompt, { maxTokens: 30 });
  assert.deepEqual(a.tokens, b.tokens);
  assert.notDeepEqual(a.tokens, g.tokens);
});

test('bad sampling options and prompts are refused with one line', () => {
  const run = (...a: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'generate', 'stories15m', ...a], { encoding: 'utf8' });
  for (const [args, msg] of [
    [['hi', '--top-p', '0'], /top-p 0 must be in \(0, 1\]/],
    [['hi', '--top-p', '1.5'], /top-p 1\.5 must be in \(0, 1\]/],
    [['hi', '--temperature', '-1'], /temperature -1 must be >= 0/],
    [['a '.repeat(300)], /prompt has \d+ tokens but the context holds 256/],
  ] as [string[], RegExp][]) {
    const r = run(...args);
    assert.notEqual(r.status, 0);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, msg);
  }
});
