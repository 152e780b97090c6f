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
import { nativeIsa } from '../src/tensor/native.js';
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

test('a float16 KV cache decodes as the float32 one, up to its rounding; a prompt continued over it too', async (t) => {
  const { model, tokenizer } = await loadModel(await pullStories15m());
  if (!nativeIsa()) {
    // without the native kernels there is no float16 cache: asked for, it is refused by name
    assert.throws(() => model.kvCache(16, 'float16'), /float16 KV cache needs the native kernels/);
    assert.equal(model.kvCache(16).dtype, 'float32');
    t.skip('native kernels not built');
    return;
  }
  const tokens = [1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217];
  const D = model.cfg.hiddenSize;
  const full = await model.hidden(tokens, 1, tokens.length);
  const scale = full.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
  const half = model.kvCache(16);
  assert.equal(half.dtype, 'float16');
  assert.ok(half.k[0] instanceof Uint16Array);
  await model.hidden(tokens.slice(0, 4), 1, 4, half);
  let worst = 0;
  for (let i = 4; i < 7; i++)
    worst = Math.max(worst, maxAbsDiff(await model.hidden([tokens[i]!], 1, 1, half), full.subarray(i * D, (i + 1) * D)));
  // three positions at once over the float16 cache (widened for the position-major kernels)
  const rest = await model.hidden(tokens.slice(7), 1, 3, half);
  worst = Math.max(worst, maxAbsDiff(rest, full.subarray(7 * D)));
  // float16 keeps 11 significant bits: the states move (here by 6e-5 of their scale), but by less than 3e-4
  assert.ok(worst > 0 && worst < 3e-4 * scale, `max |diff| ${worst} of scale ${scale}`);
  assert.equal(half.length, tokens.length);
  // greedy generation picks the same tokens as with a float32 cache
  const prompt = tokenizer.encode('Once upon a time');
  const a = await generate(model, prompt, { maxTokens: 64, stop: [] });
  const b = await generate(model, prompt, { maxTokens: 64, stop: [], kvCache: 'float32' });
  assert.equal(a.kvCache, 'float16');
  assert.equal(b.kvCache, 'float32');
  assert.deepEqual(a.tokens, b.tokens);
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
