import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadText } from '../src/calib/datasets.js';
import { evaluate, referenceStates } from '../src/eval/perplexity.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadModel } from '../src/models/load.js';
import { tempDir } from './helpers/temp.js';

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

test("a float model over the loaded-size limit, opened streamed, evaluates block by block to the held model's perplexity, bit for bit", async () => {
  const dir = await pullStories15m();
  const { model: held, tokenizer } = await loadModel(dir);
  const tokens = tokenizer.encode(await loadText('sotu-test'), { dummyPrefix: false });
  // its 6 blocks as float32 are 0.0239 GB: over this limit, a plain load is refused and a streamed one holds none
  process.env['GPTQ_TS_MAX_LOADED_GB'] = '0.01';
  let opened;
  try {
    await assert.rejects(loadModel(dir), /more than the limit of 0\.01 GB/);
    opened = await loadModel(dir, { stream: true });
  } finally {
    delete process.env['GPTQ_TS_MAX_LOADED_GB'];
  }
  const { model, stream } = opened;
  assert.ok(stream, 'opened streamed');
  assert.match(stream.reason, /stories15M: gptq-ts would hold 0\.0239 GB of its weights/);
  assert.equal(model.blocks.length, 0);
  await assert.rejects(model.hidden([1, 2], 1, 2), /holds 0 of its 6 blocks/);
  const prepared: number[] = [];
  const counting = { ...stream, prepare: (i: number) => (prepared.push(i), stream.prepare(i)) };
  try {
    // 7 windows in batches of 3: a last, partial batch
    const plan = { windows: 7, batch: 3, seqlen: 256 };
    const blocks: number[] = [];
    const r = await evaluate(model, tokens, { ...plan, stream: counting, onBlock: (d) => blocks.push(d) });
    assert.deepEqual(prepared, [0, 1, 2, 3, 4, 5], 'each block prepared once, in order');
    assert.deepEqual(blocks, [1, 2, 3, 4, 5, 6]);
    assert.equal(r.ppl, (await evaluate(held, tokens, plan)).ppl);
    // the same hidden states as reference states: zero KL against the held model, exactly
    const ref = await referenceStates(model, tokens, { ...plan, stream });
    assert.deepEqual(ref.hidden, (await referenceStates(held, tokens, plan)).hidden);
    // and the protocol's figure over its 128 windows
    const full = await evaluate(model, tokens, { stream });
    assert.equal(full.windows, 128);
    assert.ok(Math.abs(full.ppl / 632.53 - 1) < 1e-4, `ppl ${full.ppl} vs the protocol's 632.53`);
  } finally {
    stream.close();
  }
});

test('a model compared with itself has zero KL and full top-1 agreement', async () => {
  const { model, tokenizer } = await loadModel(await pullStories15m());
  const tokens = tokenizer.encode(await loadText('sotu-test'));
  const r = await evaluate(model, tokens, { windows: 4, ref: await referenceStates(model, tokens, { windows: 4 }) });
  assert.ok(Math.abs(r.kl!) < 1e-5, `kl ${r.kl}`);
  assert.equal(r.top1, 1);
});

test("against a reference, llama-perplexity's statistics equal their definitions on the full distributions", async () => {
  const { quantizeModel, QUANTIZE_REFERENCE } = await import('../src/quant/quantize-model.js');
  const { writeFakeQuant } = await import('../src/formats/fake-quant.js');
  const { join } = await import('node:path');
  const dir = await pullStories15m();
  const { model: fp, tokenizer } = await loadModel(dir);
  const { layers } = await quantizeModel(dir, fp.backend, { ...QUANTIZE_REFERENCE, method: 'rtn', bits: 3, groupSize: 32 }, undefined);
  const qdir = join(tempDir('klstats-'), 'q');
  await writeFakeQuant(dir, qdir, layers, {});
  const q = (await loadModel(qdir)).model;
  const tokens = tokenizer.encode(await loadText('sotu-test')).slice(0, 2 * 64);
  const r = await evaluate(q, tokens, { windows: 2, seqlen: 64, ref: await referenceStates(fp, tokens, { windows: 2, seqlen: 64 }) });
  // the definitions, from both models' full next-token distributions
  const V = fp.cfg.vocabSize;
  const probs = async (m: typeof fp, w: number): Promise<Float64Array[]> => {
    const logits = await m.logits(await m.hidden(tokens.slice(w * 64, (w + 1) * 64), 1, 64), 64);
    return Array.from({ length: 63 }, (_, t) => {
      const row = logits.subarray(t * V, (t + 1) * V);
      const max = Math.max(...row);
      const e = Float64Array.from(row, (x) => Math.exp(x - max));
      const sum = e.reduce((a, x) => a + x, 0);
      return e.map((x) => x / sum);
    });
  };
  const kls: number[] = [];
  let dp2 = 0;
  let same = 0;
  for (let w = 0; w < 2; w++) {
    const [P, Q] = [await probs(fp, w), await probs(q, w)];
    P.forEach((p, t) => {
      kls.push(p.reduce((a, x, i) => a + (x > 0 ? x * Math.log(x / Q[t]![i]!) : 0), 0));
      const next = tokens[w * 64 + t + 1]!;
      dp2 += (Q[t]![next]! - p[next]!) ** 2;
      same += Number(p.indexOf(Math.max(...p)) === Q[t]!.indexOf(Math.max(...Q[t]!)));
    });
  }
  const n = kls.length;
  const mean = kls.reduce((a, x) => a + x, 0) / n;
  const sorted = [...kls].sort((a, b) => a - b);
  const close = (a: number, b: number, what: string): void =>
    assert.ok(Math.abs(a - b) <= 1e-4 + 1e-3 * Math.abs(b), `${what}: ${a} vs ${b}`);
  close(r.kl!, mean, 'mean KLD');
  close(r.klUncertainty!, Math.sqrt(kls.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1) / n), 'its standard error');
  close(r.klPercentiles!.p99, sorted[Math.round(0.99 * (n - 1))]!, '99% KLD');
  close(r.klPercentiles!.median, sorted[Math.round(0.5 * (n - 1))]!, 'median KLD');
  close(r.deltaPRms!, Math.sqrt(dp2 / n), 'Δp RMS');
  assert.equal(Math.round(r.top1! * n), same, 'same top token');
  assert.ok(mean > 0.01, `3-bit RTN moves the distributions (${mean})`);
});

test('text too short for one window is refused', async () => {
  const { model } = await loadModel(await pullStories15m());
  await assert.rejects(evaluate(model, [1, 2, 3]), /too short for one window/);
});
