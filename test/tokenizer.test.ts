import assert from 'node:assert/strict';
import { test } from 'node:test';
import llamaTokenizer from 'llama-tokenizer-js';
import { loadText } from '../src/calib/datasets.js';
import { pullStories15m, stories15mLlama2cFiles } from '../src/io/stories.js';
import { LlamaTokenizer } from '../src/io/tokenizer.js';
import { loadTokenizer } from '../src/models/load.js';
import { tempDir } from './helpers/temp.js';

// llama-tokenizer-js is an independent JS port of the Llama SentencePiece tokenizer (its own vocab and merges)
const oracle = (text: string): number[] => llamaTokenizer.encode(text) as number[];

const fromJson = async (): Promise<LlamaTokenizer> => loadTokenizer(await pullStories15m());
const fromBin = async (): Promise<LlamaTokenizer> =>
  LlamaTokenizer.fromLlama2cBin((await stories15mLlama2cFiles()).tokenizer, 'tokenizer.bin');

test('"Once upon a time" has the protocol ids', async () => {
  for (const tok of [await fromJson(), await fromBin()]) assert.deepEqual(tok.encode('Once upon a time'), [1, 9038, 2501, 263, 931]);
});

// ids from the Hugging Face `tokenizers` library with the Prepend("▁") normalizer removed from tokenizer.json
test('without the dummy prefix only the first word changes', async () => {
  for (const tok of [await fromJson(), await fromBin()]) {
    assert.deepEqual(tok.encode('Once upon a time', { dummyPrefix: false }), [1, 26222, 2501, 263, 931]);
    assert.deepEqual(
      tok.encode('CHAPTER 1. Loomings.', { dummyPrefix: false }),
      [1, 3210, 3301, 4945, 29871, 29896, 29889, 4309, 290, 886, 29889],
    );
    assert.deepEqual(tok.encode('Mr. Speaker', { dummyPrefix: false }), [1, 20335, 29889, 5013, 5790]);
  }
});

const EDGE_CASES = [
  ' ',
  'a',
  '  two  spaces   three',
  'line\nbreaks\n\n\nand\ttabs',
  'emoji 🦙 and 漢字 and ünïcödé — “quotes”',
  '1234567890 3.14159 $100,000',
  'trailing space ',
  '\u0000\u0001 control',
];

test('edge cases match the oracle', async () => {
  const tok = await fromJson();
  assert.deepEqual(tok.encode(''), [1]);
  assert.deepEqual(tok.encode('', { bos: false }), []);
  for (const s of EDGE_CASES) assert.deepEqual(tok.encode(s), oracle(s), JSON.stringify(s));
});

for (const data of ['sotu-test', 'moby', 'sotu-calib']) {
  test(`real text (${data}, 150k characters) matches the oracle token for token`, async () => {
    const text = (await loadText(data)).slice(0, 150_000);
    const want = oracle(text);
    for (const tok of [await fromJson(), await fromBin()]) assert.deepEqual(tok.encode(text), want);
  });
}

test('decode inverts encode, including byte-fallback characters', async () => {
  const tok = await fromJson();
  for (const s of EDGE_CASES) assert.equal(tok.decode(tok.encode(s)), s);
});

test('tokenizer.json written from tokenizer.bin reads back to the same tokenizer', async () => {
  const bin = await fromBin();
  const { writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const path = join(tempDir('tok-'), 'tokenizer.json');
  writeFileSync(path, JSON.stringify(bin.toTokenizerJson()));
  const back = LlamaTokenizer.fromTokenizerJson(path);
  assert.deepEqual(back.pieces, bin.pieces);
  const text = (await loadText('moby')).slice(0, 20_000);
  assert.deepEqual(back.encode(text), bin.encode(text));
});

test('pieces named like JavaScript object members (constructor, toString, valueOf) survive conversion and encode', async () => {
  const bin = await fromBin();
  const json = bin.toTokenizerJson() as { model: { vocab: Record<string, number> } };
  for (const p of ['constructor', 'toString', 'valueOf']) {
    assert.ok(Object.hasOwn(json.model.vocab, p), p);
    assert.equal(json.model.vocab[p], bin.pieces.indexOf(p));
  }
  const { writeFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const path = join(tempDir('tok-'), 'tokenizer.json');
  writeFileSync(path, JSON.stringify(json));
  const text = 'the constructor calls toString and valueOf';
  assert.deepEqual(LlamaTokenizer.fromTokenizerJson(path).encode(text), bin.encode(text));
});
