import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadText } from '../src/calib/datasets.js';
import { evaluate, referenceStates } from '../src/eval/perplexity.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadModel } from '../src/models/load.js';

/*
 * Reference perplexities of fp32 stories15M (first 128 windows of 256 tokens), from an independent PyTorch
 * implementation, given in the protocol. sotu-test agrees to 0.01%. moby is 0.17% high: our tokens equal
 * the SentencePiece oracle's (tokenizer.test.ts) and the fp64 reference kernels give the same value, so the
 * gap is recorded as an open question rather than tuned away; the bound below catches any regression.
 */
const REFERENCE = { 'sotu-test': { ppl: 632.53, tol: 0.001 }, moby: { ppl: 1146.92, tol: 0.0025 } };

for (const [data, { ppl, tol }] of Object.entries(REFERENCE)) {
  test(`fp32 stories15M perplexity on ${data} matches the reference within ${tol * 100}%`, async () => {
    const { model, tokenizer } = await loadModel(await pullStories15m());
    const r = await evaluate(model, tokenizer.encode(await loadText(data)));
    assert.equal(r.windows, 128);
    assert.equal(r.tokens, 32768);
    assert.ok(Math.abs(r.ppl / ppl - 1) < tol, `ppl ${r.ppl} vs reference ${ppl}`);
  });
}

test('a model compared with itself has zero KL and full top-1 agreement', async () => {
  const { model, tokenizer } = await loadModel(await pullStories15m());
  const tokens = tokenizer.encode(await loadText('sotu-test'));
  const r = await evaluate(model, tokens, { windows: 4, ref: await referenceStates(model, tokens, { windows: 4 }) });
  assert.ok(Math.abs(r.kl!) < 1e-5, `kl ${r.kl}`);
  assert.equal(r.top1, 1);
});

test('text too short for one window is refused', async () => {
  const { model } = await loadModel(await pullStories15m());
  await assert.rejects(evaluate(model, [1, 2, 3]), /too short for one window/);
});
