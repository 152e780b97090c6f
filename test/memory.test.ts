import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import { bf16ArrayToFloat } from '../src/io/fp16.js';
import { writeSafetensors, type TensorToWrite } from '../src/io/safetensors.js';
import { Decoder, KvCache, linearGroups, linearShape, parseModelConfig } from '../src/models/index.js';
import { getBackend } from '../src/tensor/index.js';
import { floatRows, rowsF32, type StoredRows } from '../src/tensor/rows.js';
import * as ref from '../src/tensor/ref.js';
import { evaluate } from '../src/eval/perplexity.js';
import { pullStories15m } from '../src/io/stories.js';
import { tempDir } from './helpers/temp.js';

/** What eval and generate hold: a 16-bit embedding stays 16-bit, and the KV cache grows with the sequence. */
const config = {
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 300,
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: false,
};
let dir: string;
let embed: Uint16Array;

async function writeModel(embedding: Uint16Array): Promise<void> {
  const cfg = parseModelConfig(config, 'tiny');
  const rnd = seededRandom(3);
  const tensors = new Map<string, TensorToWrite>();
  const dense = (r: number, c: number): TensorToWrite => ({
    dtype: 'F32',
    shape: [r, c],
    data: Float32Array.from({ length: r * c }, () => (rnd() - 0.5) / 4),
  });
  const ones = (): TensorToWrite => ({ dtype: 'F32', shape: [64], data: new Float32Array(64).fill(1) });
  tensors.set('model.embed_tokens.weight', { dtype: 'BF16', shape: [300, 64], data: embedding });
  for (let l = 0; l < 2; l++) {
    tensors.set(`model.layers.${l}.input_layernorm.weight`, ones());
    tensors.set(`model.layers.${l}.post_attention_layernorm.weight`, ones());
    for (const n of linearGroups(cfg).flat()) tensors.set(`model.layers.${l}.${n}.weight`, dense(...linearShape(cfg, n)));
  }
  tensors.set('model.norm.weight', ones());
  tensors.set('lm_head.weight', dense(300, 64));
  rmSync(join(dir, 'model.safetensors'), { force: true });
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
}

before(async () => {
  dir = tempDir('memory-');
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  const rnd = seededRandom(7);
  embed = Uint16Array.from({ length: 300 * 64 }, () => 0x3c00 + Math.floor(rnd() * 0x0400) - (rnd() < 0.5 ? 0 : 0x8000));
  await writeModel(embed);
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('an untied bf16 embedding is held as stored and widened per token exactly', async () => {
  const model = await Decoder.load(dir, await getBackend());
  assert.equal(model.embed.dtype, 'BF16');
  assert.equal(model.embed.data.BYTES_PER_ELEMENT, 2);
  const ids = [5, 299, 0, 5];
  const x = await model.embedTokens(ids);
  const all = bf16ArrayToFloat(embed);
  ids.forEach((t, i) => assert.deepEqual(x.subarray(i * 64, (i + 1) * 64), all.subarray(t * 64, (t + 1) * 64)));
});

test('a NaN in a 16-bit embedding is refused by name, as in float tensors', async () => {
  const bad = embed.slice();
  bad[70] = 0x7fc0;
  await writeModel(bad);
  try {
    await assert.rejects(Decoder.load(dir, await getBackend()), /model\.embed_tokens\.weight contains NaN\/Inf at element 70/);
  } finally {
    await writeModel(embed);
  }
});

test('the KV cache holds what the sequence uses, not the whole context, and decodes as a full forward does', async () => {
  const model = await Decoder.load(dir, await getBackend());
  const cache = new KvCache(model.cfg, 4096);
  const width = model.cfg.numKvHeads * model.cfg.headDim;
  const ids = Array.from({ length: 70 }, (_, i) => (i * 37) % 300);
  await model.hidden(ids.slice(0, 3), 1, 3, cache);
  assert.equal(cache.k[0]!.length, 16 * width);
  let last: Float32Array = new Float32Array(0);
  for (const t of ids.slice(3)) last = await model.hidden([t], 1, 1, cache);
  // 16 → 32 → 48 → 64 → 80 rows: by a quarter, in whole steps of 16
  assert.equal(cache.k[0]!.length, 80 * width);
  // a long one grows by a quarter: a decode step reads every row held
  const long = new KvCache(model.cfg, 4096);
  long.reserve(1000);
  long.reserve(1001);
  assert.equal(long.rows, 1264);
  assert.equal(long.k[0]!.length, 1264 * width);
  const full = await model.hidden(ids, 1, ids.length);
  const tail = full.subarray(full.length - 64);
  for (let i = 0; i < 64; i++) assert.ok(Math.abs(tail[i]! - last[i]!) < 1e-4, `position 69, dim ${i}`);
});

/**
 * A 16-bit head is read as stored, a vocabulary slice at a time. Widening is exact, so what can differ from the
 * float32 path (the whole head widened, the definition's float64 log-softmax of float32 logits) is only the
 * slices' log-sum-exps joined in float64: per-position NLL within 1e-5, perplexities within 1e-6 of each other.
 */
for (const [name, where] of [
  ['stories15M', async () => pullStories15m()],
  ['the tied Gemma fixture', async () => join(import.meta.dirname, 'fixtures/families/gemma')],
] as const) {
  test(`${name}: a bf16 head read in vocabulary slices gives the float32 path's logits and NLL`, async () => {
    const backend = await getBackend();
    const f32 = await Decoder.load(await where(), backend);
    const { vocabSize: V, embedDim: D, tieWordEmbeddings: tied } = f32.cfg;
    const bits = Uint16Array.from(new Uint32Array(rowsF32(f32.head, 0, V, D).slice().buffer), (b) => b >>> 16);
    const head: StoredRows = { dtype: 'BF16', data: bits };
    const wide = floatRows(bf16ArrayToFloat(bits));
    const half = new Decoder(f32.cfg, backend, { ...f32.outer, head, embed: tied ? head : f32.embed }, f32.blocks);
    const full = new Decoder(f32.cfg, backend, { ...f32.outer, head: wide, embed: tied ? wide : f32.embed }, f32.blocks);
    assert.equal(half.head === half.embed, tied, 'a tied embedding and head are one table');
    const seq = Math.min(64, f32.cfg.maxPositions);
    const ids = Int32Array.from({ length: 2 * seq }, (_, i) => (i * 7919 + 3) % V);
    const h = await half.hidden(ids, 2, seq);
    const rows = 2 * seq - 1;
    const targets = ids.subarray(1);
    const x = h.subarray(0, rows * D);
    const want = ref.headStats(x, wide, rows, D, V, targets);
    // about eight slices of the vocabulary
    const got = await backend.headStats(x, head, rows, D, V, targets, { sliceFloats: Math.ceil(V / 8) * Math.max(D, rows) });
    let worst = 0;
    for (let i = 0; i < rows; i++) worst = Math.max(worst, Math.abs(got.nll[i]! - want.nll[i]!));
    assert.ok(worst < 1e-5, `max |ΔNLL| ${worst.toExponential(2)}`);
    const mean = (a: Float32Array): number => a.reduce((s, v) => s + v, 0) / a.length;
    // (as a relative difference: printed to 6 digits, two values this close can still round apart)
    const [pg, pw] = [Math.exp(mean(got.nll)), Math.exp(mean(want.nll))];
    assert.ok(Math.abs(pg / pw - 1) < 1e-6, `perplexity ${pg} vs ${pw}`);
    assert.equal(half.head.dtype, 'BF16', 'eval leaves the head as stored');
    // generation keeps it 16-bit (the 16-bit kernel's memory, one table with a tied embedding): several rows'
    // logits are the float32 head's exactly, one row's (the kernel's) within float32 summation error
    const a = await half.logits(h, 2 * seq);
    const b = await full.logits(h, 2 * seq);
    assert.equal(half.head.dtype, 'BF16');
    assert.equal(half.head === half.embed, tied, 'still one table when tied');
    assert.deepEqual(a, b);
    const last = h.subarray((2 * seq - 1) * D);
    const one = await half.logits(last, 1);
    const want1 = b.subarray((2 * seq - 1) * V);
    for (let v = 0; v < V; v++) {
      let scale = 0;
      for (let d = 0; d < D; d++) scale += Math.abs(last[d]! * wide.data[v * D + d]!);
      assert.ok(Math.abs(one[v]! - want1[v]!) <= 1e-6 * scale + 1e-30, `one-row logit ${v}: ${one[v]} vs ${want1[v]}`);
    }
    const e16 = await evaluate(new Decoder(f32.cfg, backend, { ...f32.outer, head, embed: tied ? head : f32.embed }, f32.blocks), ids, {
      seqlen: seq,
    });
    const e32 = await evaluate(full, ids, { seqlen: seq });
    assert.equal(e16.ppl.toPrecision(6), e32.ppl.toPrecision(6));
    assert.ok(Math.abs(e16.meanNll - e32.meanNll) < 1e-6, `mean NLL ${e16.meanNll} vs ${e32.meanNll}`);
  });
}
