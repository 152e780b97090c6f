import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { convertLlama2c } from '../src/io/llama2c.js';
import { pullStories15m, stories15mLlama2cFiles } from '../src/io/stories.js';
import { generate } from '../src/infer/generate.js';
import { KvCache, Decoder } from '../src/models/index.js';
import { loadModel } from '../src/models/load.js';
import { getBackend } from '../src/tensor/index.js';
import { Llama2cReference, randomLlama2c } from './helpers/llama2c-forward.js';
import { tempDir } from './helpers/temp.js';

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Our batched HF-layout forward vs the token-at-a-time llama2.c transcription on the raw checkpoint. */
async function compareLayouts(bin: Uint8Array, tokens: number[]): Promise<number> {
  const dir = tempDir('gptq-conv-');
  const binPath = join(dir, 'model.bin');
  writeFileSync(binPath, bin);
  await convertLlama2c(binPath, undefined, join(dir, 'hf'));
  const model = await Decoder.load(join(dir, 'hf'), await getBackend());
  const logits = await model.logits(await model.hidden(tokens, 1, tokens.length), tokens.length);
  const ref = new Llama2cReference(bin);
  const V = model.cfg.vocabSize;
  let worst = 0;
  tokens.forEach((t, pos) => {
    worst = Math.max(worst, maxAbsDiff(logits.subarray(pos * V, (pos + 1) * V), ref.forward(t, pos)));
  });
  return worst;
}

test('converted stories15M (tied classifier) gives llama2.c logits', async () => {
  const { checkpoint } = await stories15mLlama2cFiles();
  const worst = await compareLayouts(checkpoint, [1, 9038, 2501, 263, 931, 29892, 727, 471]);
  assert.ok(worst < 1e-4, `max |logit diff| ${worst}`);
});

test('converted random model with separate classifier and grouped kv heads gives llama2.c logits', async () => {
  const bin = randomLlama2c({ dim: 32, hidden: 48, layers: 2, heads: 4, kvHeads: 2, vocab: 70, seqLen: 16, shared: false, seed: 7 });
  const worst = await compareLayouts(bin, [1, 5, 9, 33, 69, 2, 17, 40, 3, 11]);
  assert.ok(worst < 1e-4, `max |logit diff| ${worst}`);
});

test('KV-cache decoding equals one batched prefill', async () => {
  const { model } = await loadModel(await pullStories15m());
  const tokens = [1, 9038, 2501, 263, 931, 29892, 727];
  const D = model.cfg.hiddenSize;
  const full = await model.hidden(tokens, 1, tokens.length);
  const cache = new KvCache(model.cfg, 16);
  await model.hidden(tokens.slice(0, 4), 1, 4, cache);
  for (let i = 4; i < tokens.length; i++) {
    const step = await model.hidden([tokens[i]!], 1, 1, cache);
    assert.ok(maxAbsDiff(step, full.subarray(i * D, (i + 1) * D)) < 1e-4);
  }
  assert.equal(cache.length, tokens.length);
});

test('batched windows equal the same windows run one at a time', async () => {
  const { model } = await loadModel(await pullStories15m());
  const a = [1, 9038, 2501, 263, 931, 29892];
  const b = [1, 450, 11203, 471, 2253, 322];
  const both = await model.hidden([...a, ...b], 2, 6);
  const D = model.cfg.hiddenSize;
  // the batch of two and a window alone may take different attention kernels (onnxruntime and the small-work TS
  // one): float32 rounding apart, relative to the hidden states' scale (up to ~80 here), not a mixed sequence
  for (const [i, alone] of [a, b].entries()) {
    const want = await model.hidden(alone, 1, 6);
    const scale = want.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    assert.ok(maxAbsDiff(both.subarray(i * 6 * D, (i + 1) * 6 * D), want) < 1e-6 * scale);
  }
});

test('greedy generation from stories15M tells the expected story', async () => {
  const { model, tokenizer } = await loadModel(await pullStories15m());
  const prompt = tokenizer.encode('Once upon a time');
  const r = await generate(model, prompt, { maxTokens: 24 });
  assert.match(tokenizer.decode([...prompt, ...r.tokens]), /^Once upon a time, there was a little girl named Lily\. She loved to play/);
});

test('generation rejects an empty prompt and one that fills the context', async () => {
  const { model } = await loadModel(await pullStories15m());
  await assert.rejects(generate(model, []), /empty prompt/);
  await assert.rejects(generate(model, new Array(256).fill(1)), /context holds 256/);
});
