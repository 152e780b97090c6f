import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { getLlama } from 'node-llama-cpp';
import { loadText } from '../src/calib/datasets.js';
import { evaluate } from '../src/eval/perplexity.js';
import { writeFakeQuant } from '../src/formats/fake-quant.js';
import { writeGptqCheckpoint } from '../src/formats/gptq.js';
import { writeGguf, writeGgufVocab } from '../src/formats/gguf.js';
import { GgufFile, GGUF_VALUE_TYPES, type GgufMetaEntry } from '../src/formats/gguf-read.js';
import { UserError } from '../src/io/errors.js';
import { pullStories15m } from '../src/io/stories.js';
import { LlamaTokenizer, loadTokenizerDir } from '../src/io/tokenizer.js';
import { linearGroups, linearShape, preparedBytes } from '../src/models/index.js';
import { loadModel } from '../src/models/load.js';
import { quantizeModel, QUANTIZE_REFERENCE } from '../src/quant/quantize-model.js';
import { getBackend } from '../src/tensor/index.js';
import { writeByteTokenizer } from './helpers/byte-tokenizer.js';
import { tempDir } from './helpers/temp.js';

/*
 * Reading GGUF files: ours (the same quantized layers as a float checkpoint give the same logits) and llama.cpp's
 * (its converter and llama-quantize made test/fixtures/gguf, scripts/gguf/make_llamacpp_fixtures.sh: our engine
 * predicts what llama.cpp predicts from the same file, and tokenizes as it does), vocabularies read back into the
 * ids of the tokenizers library, and files that lie about themselves refused by name.
 */

const FIXTURES = join(import.meta.dirname, 'fixtures', 'gguf');
const TOKENIZERS = join(import.meta.dirname, 'fixtures', 'tokenizers');
const SEGMENTS = JSON.parse(readFileSync(join(TOKENIZERS, 'corpus.json'), 'utf8')) as string[];
const tmp = (prefix: string): string => tempDir(prefix);

test('our GGUF runs in our engine exactly as the same quantized layers from a checkpoint: Q4_K (dequantized) and Q4_0 (packed)', async () => {
  const dir = await pullStories15m();
  const { model, tokenizer } = await loadModel(dir);
  const text = (await loadText('sotu-test')).slice(0, 20_000);
  for (const blockType of ['Q4_K', 'Q4_0'] as const) {
    // Q4_0 as GPTQ's own 4-bit g32 symmetric grid (what a GPTQ checkpoint holds too), Q4_K on its block grid
    const opts =
      blockType === 'Q4_0'
        ? { ...QUANTIZE_REFERENCE, method: 'rtn' as const, bits: 4, groupSize: 32, sym: true }
        : { ...QUANTIZE_REFERENCE, method: 'rtn' as const, blockType, sym: true };
    const { layers, config } = await quantizeModel(dir, model.backend, opts, undefined);
    const base = tmp('ggufread-');
    const file = join(base, 'model.gguf');
    await writeGguf(dir, config, tokenizer, layers, file);
    // Q4_K runs dequantized: the reference is the float weights of a fake-quant checkpoint; Q4_0 runs on the packed
    // kernels, as a GPTQ checkpoint of the same layers does
    const fake = join(base, 'ref');
    if (blockType === 'Q4_0')
      await writeGptqCheckpoint(dir, fake, layers, {
        format: 'gptq_v2',
        floatDtype: 'F32',
        maxShardBytes: 2 ** 40,
        quant: { ...opts, bits: 4, groupSize: 32 },
      });
    else await writeFakeQuant(dir, fake, layers, {});
    // GGUF stores the norm epsilon as float32: the checkpoint states the same value, so only the weights' path differs
    float32Config(fake);

    const g = await loadModel(file);
    const f = await loadModel(fake);
    // packed: the kernel keeps about half a byte per weight, not float32's four
    const block = g.model.blocks[0]!;
    const weights = linearGroups(g.model.cfg)
      .flat()
      .reduce((s, n) => s + linearShape(g.model.cfg, n)[0] * linearShape(g.model.cfg, n)[1], 0);
    if (blockType === 'Q4_0')
      assert.ok(preparedBytes(block) < weights, `Q4_0 kernels hold ${preparedBytes(block)} bytes for ${weights} weights`);
    const ids = f.tokenizer.encode(text);
    assert.deepEqual(g.tokenizer.encode(text), ids, `${blockType}: the GGUF's vocabulary tokenizes as tokenizer.json`);
    const seq = ids.slice(0, 64);
    const lg = await g.model.logits(await g.model.hidden(seq, 1, seq.length), seq.length);
    const lf = await f.model.logits(await f.model.hidden(seq, 1, seq.length), seq.length);
    const bad = lg.findIndex((v, i) => !Object.is(v, lf[i]));
    assert.equal(bad, -1, `${blockType}: logit ${bad} differs (${lg[bad]} vs ${lf[bad]})`);
    const plan = { windows: 4, seqlen: 128, source: 'sotu-test' };
    const pg = (await evaluate(g.model, ids, plan)).ppl;
    const pf = (await evaluate(f.model, ids, plan)).ppl;
    assert.equal(pg, pf, blockType);
    // over the loaded-size limit the file is opened streamed, and evaluates the same
    process.env['GPTQ_TS_MAX_LOADED_GB'] = '0';
    const s = await loadModel(file, { stream: true }).finally(() => delete process.env['GPTQ_TS_MAX_LOADED_GB']);
    assert.ok(s.stream && s.model.blocks.length === 0, blockType);
    try {
      assert.equal((await evaluate(s.model, ids, { ...plan, stream: s.stream })).ppl, pg, `${blockType} streamed`);
    } finally {
      s.stream.close();
    }
    // and it is a different model from the float one: quantization moved the perplexity
    const p0 = (await evaluate(model, ids, plan)).ppl;
    assert.ok(Math.abs(pg - p0) > 1e-3 * p0, `${blockType}: ppl ${pg} vs float ${p0}`);
  }
});

/** A family fixture with the byte-level tokenizer (and config edits where llama.cpp's architecture fixes a value). */
function familyDir(fixture: string, edit?: Record<string, unknown>): string {
  const dir = join(tmp(`ggufread-${fixture}-`), 'model');
  cpSync(join(import.meta.dirname, 'fixtures', 'families', fixture), dir, { recursive: true });
  if (edit) {
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, ...edit }));
  }
  writeByteTokenizer(dir);
  return dir;
}

/** The config.json of a checkpoint with the values a GGUF stores as float32 (epsilon, Granite's multipliers) rounded so. */
function float32Config(dir: string): void {
  const path = join(dir, 'config.json');
  const cfg = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  for (const k of ['rms_norm_eps', 'embedding_multiplier', 'residual_multiplier', 'attention_multiplier', 'logits_scaling'])
    if (typeof cfg[k] === 'number') cfg[k] = Math.fround(cfg[k]);
  writeFileSync(path, JSON.stringify(cfg));
}

test('every architecture gptq-ts reads back: our Q8_0 GGUF of each of 21 family fixtures runs exactly as its GPTQ checkpoint', async () => {
  const backend = await getBackend();
  // llama.cpp scales Gemma 2/3 attention by 1/sqrt(head_dim) (the writer refuses other query_pre_attn_scalar values)
  const cases: [string, Record<string, unknown>?][] = [
    ['llama'],
    ['llama-bias'],
    ['llama-head-dim'],
    ['llama-tied'],
    ['llama-rope-linear'],
    ['llama-rope-llama3'],
    ['mistral'],
    ['qwen2'],
    ['qwen3'],
    ['phi3'],
    ['phi3-partial-rotary'],
    ['gemma'],
    ['gemma2', { query_pre_attn_scalar: 16 }],
    ['gemma3_text', { query_pre_attn_scalar: 16 }],
    ['granite'],
    ['olmo2'],
    ['bloom'],
    // llama.cpp's GELU is the tanh approximation (the writer warns for erf's)
    ['gpt_neox', { hidden_act: 'gelu_new' }],
    ['falcon', { activation: 'gelu_new' }],
    ['falcon-mqa', { activation: 'gelu_new' }],
    ['gpt2'],
  ];
  const seq = [1, 17, 42, 99, 3, 5, 200, 7, 8, 9, 10, 11, 12, 13];
  for (const [fixture, edit] of cases) {
    const dir = familyDir(fixture, edit);
    const opts = { ...QUANTIZE_REFERENCE, method: 'rtn' as const, bits: 8, groupSize: 32, sym: true };
    const { layers, config } = await quantizeModel(dir, backend, opts, undefined);
    const file = join(dir, '..', 'model.gguf');
    await writeGguf(dir, config, loadTokenizerDir(dir), layers, file);
    // Q8_0 runs on the packed kernels, as a GPTQ checkpoint of the same layers does
    const fake = join(dir, '..', 'gptq');
    await writeGptqCheckpoint(dir, fake, layers, { format: 'gptq_v2', floatDtype: 'F32', maxShardBytes: 2 ** 40, quant: opts });
    writeByteTokenizer(fake);
    float32Config(fake);
    const g = (await loadModel(file)).model;
    const f = (await loadModel(fake)).model;
    assert.equal(g.cfg.modelType, config.modelType === 'mistral' ? 'llama' : config.modelType, fixture);
    assert.equal(g.cfg.fusedQkv !== 'none', config.fusedQkv !== 'none', fixture);
    const a = await g.logits(await g.hidden(seq, 1, seq.length), seq.length);
    const b = await f.logits(await f.hidden(seq, 1, seq.length), seq.length);
    const bad = a.findIndex((v, i) => !Object.is(v, b[i]));
    assert.equal(bad, -1, `${fixture}: logit ${bad} differs (${a[bad]} vs ${b[bad]})`);
  }
});
test('dequantized block types read back too: Q5_0 files of a Conv1D family (gpt2) and of llama equal their fake-quant checkpoints', async () => {
  const backend = await getBackend();
  const seq = [1, 17, 42, 99, 3, 5, 200, 7];
  for (const fixture of ['gpt2', 'llama']) {
    const dir = familyDir(fixture);
    const opts = { ...QUANTIZE_REFERENCE, method: 'rtn' as const, blockType: 'Q5_0' as const, sym: true };
    const { layers, config } = await quantizeModel(dir, backend, opts, undefined);
    const file = join(dir, '..', 'model.gguf');
    await writeGguf(dir, config, loadTokenizerDir(dir), layers, file);
    const fake = join(dir, '..', 'fake');
    await writeFakeQuant(dir, fake, layers, {});
    float32Config(fake);
    const g = (await loadModel(file)).model;
    const f = (await loadModel(fake)).model;
    const a = await g.logits(await g.hidden(seq, 1, seq.length), seq.length);
    const b = await f.logits(await f.hidden(seq, 1, seq.length), seq.length);
    const bad = a.findIndex((v, i) => !Object.is(v, b[i]));
    assert.equal(bad, -1, `${fixture}: logit ${bad} differs (${a[bad]} vs ${b[bad]})`);
  }
});

/** Softmax of row r of logits [rows, vocab]. */
function softmaxRow(logits: Float32Array, vocab: number, r: number): Float64Array {
  const row = logits.subarray(r * vocab, (r + 1) * vocab);
  const max = row.reduce((m, x) => Math.max(m, x), -Infinity);
  const p = Float64Array.from(row, (x) => Math.exp(x - max));
  const sum = p.reduce((a, b) => a + b, 0);
  return p.map((x) => x / sum);
}

for (const family of ['llama', 'qwen2']) {
  test(`llama.cpp's own ${family} files (convert_hf_to_gguf.py + llama-quantize Q4_K_M, Q2_K): our engine predicts what llama.cpp predicts`, async () => {
    const llama = await getLlama({ gpu: false, build: 'never' });
    const prompt = [1, 17, 42, 99, 3, 250, 7];
    const steps = 16;
    const files = Object.fromEntries(['Q4_K_M', 'Q2_K'].map((t) => [t, join(FIXTURES, `tiny-${family}-${t}.gguf`)]));
    // llama.cpp decodes greedily from the prompt, reporting its next-token distribution at each step
    const theirs: Record<string, { tokens: number[]; probs: Map<number, number>[] }> = {};
    for (const [name, file] of Object.entries(files)) {
      const lm = await llama.loadModel({ modelPath: file });
      const ctx = await lm.createContext({ contextSize: 64, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
      const run = { tokens: [] as number[], probs: [] as Map<number, number>[] };
      for await (const out of ctx.getSequence().evaluateWithMetadata(prompt as never, { probabilities: true }, { temperature: 0 })) {
        run.tokens.push(out.token as number);
        run.probs.push(out.probabilities as Map<number, number>);
        if (run.tokens.length === steps) break;
      }
      await ctx.dispose();
      await lm.dispose();
      theirs[name] = run;
    }
    // our engine from a file, over the sequence llama.cpp decoded from another (or the same) file
    const ours = async (file: string, tokens: number[]): Promise<Float64Array[]> => {
      const { model } = await loadModel(file);
      const seq = [...prompt, ...tokens.slice(0, -1)];
      const logits = await model.logits(await model.hidden(seq, 1, seq.length), seq.length);
      return tokens.map((_, s) => softmaxRow(logits, model.cfg.vocabSize, prompt.length - 1 + s));
    };
    const kl = (p: Map<number, number>, q: Float64Array): number => {
      let d = 0;
      for (const [i, pi] of p) if (pi > 0) d += pi * Math.log(pi / Math.max(q[i]!, 1e-30));
      return d;
    };
    const meanKl = (probs: Map<number, number>[], q: Float64Array[]): number =>
      probs.reduce((a, p, s) => a + kl(p, q[s]!), 0) / probs.length;
    const q4 = theirs['Q4_K_M']!;
    const q2 = theirs['Q2_K']!;
    const drift4 = meanKl(q4.probs, await ours(files['Q4_K_M']!, q4.tokens));
    const drift2 = meanKl(q2.probs, await ours(files['Q2_K']!, q2.tokens));
    // the scale of a real difference in weights: llama.cpp on the Q4_K_M file against us on the Q2_K file
    const other = meanKl(q4.probs, await ours(files['Q2_K']!, q4.tokens));
    if (process.env['GGUF_DEBUG']) console.log(family, { drift4, drift2, other });
    // llama.cpp's K-quant dot products quantize activations to 8 bits (Q8_K); we multiply dequantized weights in
    // float32. That costs far less than a change of weights: a misread block, row or key costs more than `other`
    assert.ok(drift4 < other / 20, `Q4_K_M: KL(llama.cpp || ours) ${drift4} vs a different quantization's ${other}`);
    assert.ok(drift2 < other / 20, `Q2_K: KL(llama.cpp || ours) ${drift2} vs ${other}`);
  });
}

for (const [family, what, bos] of [
  ['llama', 'a SentencePiece model (llama vocabulary)', 1],
  ['qwen2', 'a byte-level BPE tokenizer.json (gpt2 vocabulary, gpt-2 pre-tokenizer)', undefined],
] as const) {
  test(`llama.cpp's own ${family} file: the vocabulary it converted from ${what} tokenizes as llama.cpp does`, async () => {
    const llama = await getLlama({ gpu: false, build: 'never' });
    const file = join(FIXTURES, `tiny-${family}-Q2_K.gguf`);
    const lm = await llama.loadModel({ modelPath: file, vocabOnly: true });
    const ours = LlamaTokenizer.fromGguf(new GgufFile(file));
    const mismatches: string[] = [];
    for (const text of [...SEGMENTS, SEGMENTS.join('\n')]) {
      const a = ours.encode(text, { bos: false });
      const b = Array.from(lm.tokenize(text, true));
      if (JSON.stringify(a) !== JSON.stringify(b))
        mismatches.push(`${JSON.stringify(text.slice(0, 30))}: ${a.slice(0, 8)} vs ${b.slice(0, 8)}`);
    }
    await lm.dispose();
    assert.deepEqual(mismatches, []);
    // add_bos_token (llama) or llama.cpp's default for gpt-2 (none)
    assert.equal(ours.addsBos, bos !== undefined);
    if (bos !== undefined) assert.equal(ours.encode('Hello')[0], bos);
  });
}

interface Expected {
  segments: { ids: number[] }[];
  plain: number[][];
  whole: number[];
}

/**
 * Vocabulary-only GGUFs written by our writer (writeGgufVocab; llama.cpp's converter would make 1-8 MB files of
 * these vocabularies) read back: ids equal to those the tokenizers library gave for the real tokenizer.json, except
 * where llama.cpp's runtime differs by design (no NFC normalization: text not already NFC is skipped for Qwen).
 */
test('vocabulary GGUFs of seven real tokenizers read back into the ids of the tokenizers library', async () => {
  for (const name of ['llama2', 'mistral', 'llama3', 'qwen3', 'gemma3', 'gpt2', 'deepseek_v3']) {
    const dir = tmp(`ggufvocab-${name}-`);
    writeFileSync(join(dir, 'tokenizer.json'), gunzipSync(readFileSync(join(TOKENIZERS, name, 'tokenizer.json.gz'))));
    for (const f of ['tokenizer_config.json', 'tokenizer_config.json.gz']) {
      try {
        const b = readFileSync(join(TOKENIZERS, name, f));
        writeFileSync(join(dir, 'tokenizer_config.json'), f.endsWith('.gz') ? gunzipSync(b) : b);
      } catch {
        // not there
      }
    }
    const hf = loadTokenizerDir(dir);
    const file = join(dir, 'vocab.gguf');
    await writeGgufVocab(hf, file);
    const tok = LlamaTokenizer.fromGguf(new GgufFile(file));
    const want = JSON.parse(readFileSync(join(TOKENIZERS, name, 'expected.json'), 'utf8')) as Expected;
    const nfc = JSON.stringify(hf.normalizerSpec) === '{"type":"NFC"}';
    // the library's ids carry its post-processor's BOS where it adds one (the first segments are also given without)
    const libBos = want.segments[0]!.ids.length === want.plain[0]!.length + 1;
    const plain = (ids: number[]): number[] => (libBos ? ids.slice(1) : ids);
    let compared = 0;
    SEGMENTS.forEach((s, i) => {
      if (nfc && s.normalize('NFC') !== s) return;
      const ids = plain(want.segments[i]!.ids);
      assert.deepEqual(tok.encode(s, { specialTokens: false }), ids, `${name} segment ${i} ${JSON.stringify(s.slice(0, 40))}`);
      compared++;
    });
    if (!nfc) assert.deepEqual(tok.encode(SEGMENTS.join('\n\n'), { specialTokens: false }), plain(want.whole), `${name}: the whole corpus`);
    assert.ok(compared > SEGMENTS.length * 0.9, name);
    assert.equal(tok.addsBos, hf.addsBos, `${name}: add_bos_token`);
    assert.equal(tok.bosId, hf.bosId, name);
    assert.equal(tok.eosIds[0], hf.eosIds[0], name);
  }
});

/** A GGUF file from parts, to make files that lie: metadata entries, tensor infos and the data section. */
function buildGguf(o: {
  version?: number;
  meta: [string, GgufMetaEntry][];
  tensors: { name: string; dims: number[]; type: number; offset: number }[];
  data: Uint8Array;
  alignment?: number;
  /** raw bytes replacing the value of this key (an unknown value type) */
  rawValue?: { key: string; bytes: Buffer };
}): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number): void => void parts.push(Buffer.from(new Uint32Array([v]).buffer));
  const u64 = (v: number | bigint): void => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    parts.push(b);
  };
  const str = (s: string): void => {
    const b = Buffer.from(s, 'utf8');
    u64(b.length);
    parts.push(b);
  };
  const scalar = (type: string, v: unknown): void => {
    const b = Buffer.alloc(8);
    switch (type) {
      case 'UINT8':
        return void parts.push(Buffer.from([v as number]));
      case 'INT8':
        b.writeInt8(v as number);
        return void parts.push(b.subarray(0, 1));
      case 'UINT16':
        b.writeUInt16LE(v as number);
        return void parts.push(b.subarray(0, 2));
      case 'INT16':
        b.writeInt16LE(v as number);
        return void parts.push(b.subarray(0, 2));
      case 'UINT32':
        return u32(v as number);
      case 'INT32':
        b.writeInt32LE(v as number);
        return void parts.push(b.subarray(0, 4));
      case 'FLOAT32':
        b.writeFloatLE(v as number);
        return void parts.push(b.subarray(0, 4));
      case 'BOOL':
        return void parts.push(Buffer.from([v ? 1 : 0]));
      case 'STRING':
        return str(v as string);
      case 'UINT64':
        return u64(v as number);
      case 'INT64':
        b.writeBigInt64LE(BigInt(v as number));
        return void parts.push(b);
      case 'FLOAT64':
        b.writeDoubleLE(v as number);
        return void parts.push(b);
    }
    throw new Error(type);
  };
  u32(0x46554747);
  u32(o.version ?? 3);
  u64(o.tensors.length);
  u64(o.meta.length);
  for (const [k, e] of o.meta) {
    str(k);
    if (o.rawValue?.key === k) {
      parts.push(o.rawValue.bytes);
      continue;
    }
    u32(GGUF_VALUE_TYPES.indexOf(e.type));
    if (e.type === 'ARRAY') {
      u32(GGUF_VALUE_TYPES.indexOf(e.elem!));
      const vs = e.value as unknown[];
      u64(vs.length);
      for (const v of vs) scalar(e.elem!, v);
    } else scalar(e.type, e.value);
  }
  for (const t of o.tensors) {
    str(t.name);
    u32(t.dims.length);
    for (const d of [...t.dims].reverse()) u64(d);
    u32(t.type);
    u64(t.offset);
  }
  const head = Buffer.concat(parts);
  const align = o.alignment ?? 32;
  const pad = Buffer.alloc((align - (head.length % align)) % align);
  return Buffer.concat([head, pad, o.data]);
}

/** A parsed file's parts, to rebuild it (unchanged, or with one lie). */
function partsOf(f: GgufFile): Parameters<typeof buildGguf>[0] {
  const start = Math.min(...[...f.tensors.values()].map((t) => t.offset));
  const raw = readFileSync(f.path);
  return {
    version: f.version,
    meta: [...f.metadata],
    tensors: [...f.tensors.values()].map((t) => ({ name: t.name, dims: t.shape, type: t.type, offset: t.offset - start })),
    data: raw.subarray(start),
    alignment: f.alignment,
  };
}

test('the reader parses every field: a file rebuilt from what it read is byte-identical, for our file and llama.cpp’s', async () => {
  // ours: a family fixture's layers as Q8_0
  const dir = join(tmp('ggufv-'), 'model');
  cpSync(join(import.meta.dirname, 'fixtures', 'families', 'llama'), dir, { recursive: true });
  writeByteTokenizer(dir);
  const opts = { ...QUANTIZE_REFERENCE, method: 'rtn' as const, bits: 8, groupSize: 32, sym: true };
  const { layers, config } = await quantizeModel(dir, await getBackend(), opts, undefined);
  const ours = join(dir, '..', 'model.gguf');
  await writeGguf(dir, config, loadTokenizerDir(dir), layers, ours);
  for (const path of [ours, join(FIXTURES, 'tiny-llama-Q4_K_M.gguf'), join(FIXTURES, 'tiny-llama-Q2_K.gguf')]) {
    const f = new GgufFile(path);
    const rebuilt = buildGguf(partsOf(f));
    f.close();
    assert.ok(rebuilt.equals(readFileSync(path)), path);
  }
  // every value type round-trips (our writer and llama.cpp's use few of them)
  const meta: [string, GgufMetaEntry][] = [
    ['a.u8', { type: 'UINT8', value: 200 }],
    ['a.i8', { type: 'INT8', value: -5 }],
    ['a.u16', { type: 'UINT16', value: 60000 }],
    ['a.i16', { type: 'INT16', value: -30000 }],
    ['a.u32', { type: 'UINT32', value: 4e9 }],
    ['a.i32', { type: 'INT32', value: -2e9 }],
    ['a.f32', { type: 'FLOAT32', value: Math.fround(0.1) }],
    ['a.bool', { type: 'BOOL', value: true }],
    ['a.str', { type: 'STRING', value: 'héllo' }],
    ['a.u64', { type: 'UINT64', value: 2 ** 40 + 1 }],
    ['a.i64', { type: 'INT64', value: -(2 ** 40) }],
    ['a.f64', { type: 'FLOAT64', value: 0.1 }],
    ['a.arr', { type: 'ARRAY', elem: 'INT16', value: [1, -2, 3] }],
    ['general.alignment', { type: 'UINT32', value: 64 }],
  ];
  const file = join(tmp('ggufall-'), 'all.gguf');
  writeFileSync(
    file,
    buildGguf({ version: 2, meta, tensors: [{ name: 't', dims: [2, 3], type: 0, offset: 0 }], data: Buffer.alloc(24), alignment: 64 }),
  );
  const f = new GgufFile(file);
  assert.deepEqual([...f.metadata], meta);
  assert.equal(f.alignment, 64);
  assert.equal(f.info('t').offset % 64, 0);
  assert.deepEqual(f.info('t').shape, [2, 3]);
  f.close();
});

test('files that lie about themselves, and what gptq-ts does not implement, are refused naming the file and the key or tensor', async () => {
  const src = join(FIXTURES, 'tiny-llama-Q2_K.gguf');
  const good = (() => {
    const f = new GgufFile(src);
    const p = partsOf(f);
    f.close();
    return p;
  })();
  const dir = tmp('gguflies-');
  let n = 0;
  const write = (bytes: Buffer): string => {
    const path = join(dir, `lie${n++}.gguf`);
    writeFileSync(path, bytes);
    return path;
  };
  const refuses = async (bytes: Buffer, msg: RegExp, load = false): Promise<void> => {
    const path = write(bytes);
    const err = (e: unknown): boolean =>
      e instanceof UserError && e.message.startsWith(path) && msg.test(e.message) && !e.message.includes('\n');
    if (load) await assert.rejects(loadModel(path), err, String(msg));
    else assert.throws(() => new GgufFile(path).close(), err, String(msg));
  };
  const whole = readFileSync(src);
  const t0 = good.tensors[0]!;
  const t1 = good.tensors[1]!;
  const withTensors = (tensors: typeof good.tensors): Buffer => buildGguf({ ...good, tensors });
  const withMeta = (meta: [string, GgufMetaEntry][]): Buffer => buildGguf({ ...good, meta });
  const meta = (key: string, e: GgufMetaEntry | undefined): [string, GgufMetaEntry][] =>
    e ? [...good.meta.filter(([k]) => k !== key), [key, e]] : good.meta.filter(([k]) => k !== key);

  await refuses(Buffer.from('GGML0000'), /not a GGUF file/);
  await refuses(buildGguf({ ...good, version: 1 }), /GGUF version 1 is not supported/);
  await refuses(
    whole.subarray(0, 2000),
    /metadata tokenizer\.ggml\.\w+.* (runs past the end of the file|more than the rest of the file could hold)/,
  );
  await refuses(
    whole.subarray(0, whole.length - 100),
    /tensor blk\.1\.ffn_up\.weight|tensor \S+ \(bytes \d+\.\.\d+\) runs past the end of the file/,
  );
  await refuses(
    withTensors([{ ...t0, offset: 1 << 30 }, ...good.tensors.slice(1)]),
    new RegExp(`tensor ${t0.name.replaceAll('.', '\\.')} .* runs past the end`),
  );
  await refuses(withTensors([t0, { ...t1, offset: t0.offset }, ...good.tensors.slice(2)]), /tensors \S+ and \S+ overlap/);
  await refuses(
    withTensors([{ ...t0, offset: t0.offset + 4 }, ...good.tensors.slice(1)]),
    /offset \d+ is not a multiple of the alignment 32/,
  );
  await refuses(
    withTensors([{ ...t0, type: 77 }, ...good.tensors.slice(1)]),
    new RegExp(`tensor ${t0.name.replaceAll('.', '\\.')} has unknown ggml type 77`),
  );
  await refuses(withTensors([{ ...t0, dims: [t0.dims[0]!, 100] }, ...good.tensors.slice(1)]), /rows of 100 are not whole blocks of 256/);
  await refuses(withTensors([t0, { ...t0 }, ...good.tensors.slice(2)]), /appears twice/);
  await refuses(
    buildGguf({ ...good, rawValue: { key: 'general.name', bytes: Buffer.from([99, 0, 0, 0]) } }),
    /metadata general\.name has unknown GGUF value type 99/,
  );
  await refuses(
    withMeta(meta('general.alignment', { type: 'UINT32', value: 24 })),
    /general\.alignment 24 \(UINT32\) is not a UINT32 power of two/,
  );

  // well-formed files gptq-ts does not run: refused by name when loaded
  await refuses(
    withMeta(meta('llama.expert_count', { type: 'UINT32', value: 8 })),
    /metadata llama\.expert_count 8 is not implemented for llama/,
    true,
  );
  await refuses(
    withMeta(meta('general.architecture', { type: 'STRING', value: 'mamba' })),
    /llama\.cpp architecture "mamba" is not implemented/,
    true,
  );
  await refuses(
    withMeta(meta('llama.rope.dimension_count', { type: 'UINT32', value: 32 })),
    /metadata llama\.rope\.dimension_count 32 is not what gptq-ts runs/,
    true,
  );
  await refuses(
    withMeta(meta('llama.attention.layer_norm_rms_epsilon', undefined)),
    /missing metadata llama\.attention\.layer_norm_rms_epsilon/,
    true,
  );
  await refuses(
    withMeta(meta('tokenizer.ggml.model', { type: 'STRING', value: 't5' })),
    /tokenizer\.ggml\.model "t5" is not implemented/,
    true,
  );
  await refuses(
    withMeta(meta('tokenizer.ggml.precompiled_charsmap', { type: 'ARRAY', elem: 'UINT8', value: [1] })),
    /metadata tokenizer\.ggml\.precompiled_charsmap is not implemented/,
    true,
  );
  await refuses(withMeta(meta('split.count', { type: 'UINT16', value: 2 })), /split GGUF files are not implemented/, true);
  const end = Math.ceil(good.data.length / 32) * 32;
  const extra = { name: 'blk.2.attn_q.weight', dims: [1, 256], type: 0, offset: end };
  await refuses(
    buildGguf({
      ...good,
      tensors: [...good.tensors, extra],
      data: Buffer.concat([good.data, Buffer.alloc(end - good.data.length + 1024)]),
    }),
    /tensor blk\.2\.attn_q\.weight is not part of a 2-layer llama model/,
    true,
  );
  // more weights than the memory limit allows: refused before any is read, with the figure
  process.env['GPTQ_TS_MAX_LOADED_GB'] = '0.001';
  try {
    await refuses(
      whole,
      /gptq-ts would hold 0\.0\d+ GB of its weights .* more than the limit of 0\.001 GB \(GPTQ_TS_MAX_LOADED_GB raises it\)/,
      true,
    );
  } finally {
    delete process.env['GPTQ_TS_MAX_LOADED_GB'];
  }
  // a type it has no dequantizer for: refused when the tensor is read, by name
  const iq = buildGguf({
    meta: [['general.architecture', { type: 'STRING', value: 'llama' }]],
    tensors: [{ name: 'w', dims: [1, 256], type: 16, offset: 0 }],
    data: Buffer.alloc(66),
  });
  const iqPath = write(iq);
  const f = new GgufFile(iqPath);
  assert.throws(() => f.readFloat('w'), /tensor w is IQ2_XXS, which gptq-ts does not dequantize \(it reads F32, F16, BF16, Q4_0/);
  f.close();

  // the command line: one line, non-zero exit
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'eval', write(whole.subarray(0, 3000)), '--windows', '1'], {
    encoding: 'utf8',
    cwd: join(import.meta.dirname, '..'),
  });
  assert.notEqual(r.status, 0);
  assert.match(
    r.stderr.trim(),
    /^gptq: error: \S+lie\d+\.gguf: metadata tokenizer\.ggml\.\S+ length is \d+, more than the rest of the file could hold \(truncated or corrupt GGUF\)$/,
  );
});

test('gptq inspect x.gguf: architecture, tensor types, bits per weight, size vs fp16 (and --json)', () => {
  const file = join(FIXTURES, 'tiny-llama-Q4_K_M.gguf');
  const cli = (...a: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'inspect', file, ...a], {
      encoding: 'utf8',
      cwd: join(import.meta.dirname, '..'),
    });
  const r = cli('--json');
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    architecture: string;
    types: Record<string, number>;
    tensors: { name: string; type: string; bytes: number; shape: number[] }[];
    params: number;
    bytesOnDisk: number;
    runs: unknown;
    quantizedBitsPerWeight: number;
  };
  assert.equal(j.architecture, 'llama');
  assert.equal(j.runs, true);
  // llama-quantize's Q4_K_M: Q6_K for the output, half the attn_v and ffn_down; Q4_K elsewhere
  assert.deepEqual(j.types, { Q6_K: 3, F32: 5, Q4_K: 13 });
  const q4 = j.tensors.find((t) => t.name === 'blk.0.attn_q.weight')!;
  assert.deepEqual([q4.type, q4.shape, q4.bytes], ['Q4_K', [256, 256], (256 * 256 * 144) / 256]);
  assert.equal(j.bytesOnDisk, readFileSync(file).length);
  assert.ok(j.quantizedBitsPerWeight > 4.5 && j.quantizedBitsPerWeight < 6.5625);
  const text = cli();
  assert.match(text.stdout, /architecture: llama, layers 2, hidden 256/);
  assert.match(text.stdout, /gptq-ts runs it: yes/);
  assert.match(text.stdout, /blk\.1\.ffn_down\.weight\s+Q6_K\s+\[256, 256\]\s+53760\s+6\.563/);
});

test('gptq eval and generate take a .gguf, and --ref may be one: KL against llama-quantize’s other file', () => {
  const q4 = join(FIXTURES, 'tiny-llama-Q4_K_M.gguf');
  const q2 = join(FIXTURES, 'tiny-llama-Q2_K.gguf');
  const text = join(tmp('ggufeval-'), 'corpus.txt');
  // the corpus's prose (some segments hold control characters, which --data refuses as binary)
  writeFileSync(
    text,
    SEGMENTS.filter((s) => !/[\u0000-\u0008]/.test(s))
      .join('\n\n')
      .repeat(3),
  );
  const cli = (...a: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', ...a], { encoding: 'utf8', cwd: join(import.meta.dirname, '..') });
  const r = cli('eval', q2, '--data', text, '--ref', q4, '--windows', '4', '--seqlen', '64', '--json');
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { ppl: number; kl: number; top1: number; windows: number };
  assert.equal(j.windows, 4);
  assert.ok(Number.isFinite(j.ppl) && j.ppl > 1, String(j.ppl));
  // two quantizations of one model: close, not equal (the in-process test above measured 0.79 nats on another text)
  assert.ok(j.kl > 0.01 && j.kl < 5, String(j.kl));
  const self = JSON.parse(cli('eval', q4, '--data', text, '--ref', q4, '--windows', '2', '--seqlen', '64', '--json').stdout) as {
    kl: number;
  };
  assert.ok(Math.abs(self.kl) < 1e-9, String(self.kl));
  const g = cli('generate', q4, 'The', '--max-tokens', '5', '--json');
  assert.equal(g.status, 0, g.stderr);
  const out = JSON.parse(g.stdout) as { tokens: number; promptTokens: number };
  // BOS (add_bos_token) and the prompt's pieces, as the file's vocabulary tokenizes it
  assert.equal(out.promptTokens, LlamaTokenizer.fromGguf(new GgufFile(q4)).encode('The', { bos: false }).length + 1);
  assert.ok(out.tokens >= 1 && out.tokens <= 5);
});
