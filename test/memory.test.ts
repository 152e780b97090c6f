import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import { bf16ArrayToFloat } from '../src/io/fp16.js';
import { writeSafetensors, type TensorToWrite } from '../src/io/safetensors.js';
import { Decoder, KvCache, linearGroups, linearShape, parseModelConfig } from '../src/models/index.js';
import { getBackend } from '../src/tensor/index.js';

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
  dir = mkdtempSync(join(tmpdir(), 'memory-'));
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
  assert.equal(cache.k[0]!.length, 64 * width);
  let last: Float32Array = new Float32Array(0);
  for (const t of ids.slice(3)) last = await model.hidden([t], 1, 1, cache);
  assert.equal(cache.k[0]!.length, 128 * width, 'doubled once past 64 positions');
  const full = await model.hidden(ids, 1, ids.length);
  const tail = full.subarray(full.length - 64);
  for (let i = 0; i < 64; i++) assert.ok(Math.abs(tail[i]! - last[i]!) < 1e-4, `position 69, dim ${i}`);
});
