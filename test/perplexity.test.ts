import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadText } from '../src/calib/datasets.js';
import { evaluate, referenceStates } from '../src/eval/perplexity.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadModel } from '../src/models/load.js';

/*
 * Independent figures for fp32 stories15M (first 128 windows of 256 tokens):
 * - the protocol's reference values, which (as the PyTorch run below showed) come from tokenizing each corpus
 *   without SentencePiece's dummy-prefix space: only the first word changes ("▁CHAPTER" vs "CHAPTER"), but
 *   every window boundary after it shifts by a token, so moby moves by 0.17%;
 * - PyTorch + transformers 5.18 (LlamaForCausalLM, float32, eager attention) on the same model directory, with
 *   the Hugging Face `tokenizers` library encoding the text (dummy prefix included, as the protocol's
 *   tokenizer section and "Once upon a time" -> [1, 9038, ...] require): ids equal to ours, ppl below.
 */
const CASES = [
  { data: 'sotu-test', dummyPrefix: false, ppl: 632.53, tol: 1e-4, source: 'the protocol' },
  { data: 'moby', dummyPrefix: false, ppl: 1146.92, tol: 1e-4, source: 'the protocol' },
  { data: 'sotu-test', dummyPrefix: true, ppl: 632.468414, tol: 1e-5, source: 'PyTorch' },
  { data: 'moby', dummyPrefix: true, ppl: 1148.894849, tol: 1e-5, source: 'PyTorch' },
];

for (const { data, dummyPrefix, ppl, tol, source } of CASES) {
  const how = dummyPrefix ? 'with' : 'without';
  test(`fp32 stories15M perplexity on ${data} tokenized ${how} the dummy prefix matches ${source} within ${tol * 100}%`, async () => {
    const { model, tokenizer } = await loadModel(await pullStories15m());
    const r = await evaluate(model, tokenizer.encode(await loadText(data), { dummyPrefix }));
    assert.equal(r.windows, 128);
    assert.equal(r.tokens, 32768);
    assert.ok(Math.abs(r.ppl / ppl - 1) < tol, `ppl ${r.ppl} vs ${source} ${ppl}`);
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
