import assert from 'node:assert/strict';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { getLlama } from 'node-llama-cpp';
import { writeByteTokenizer } from './helpers/byte-tokenizer.js';
import { writeGguf } from '../src/formats/gguf.js';
import { writeGptqCheckpoint } from '../src/formats/gptq.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { getBackend } from '../src/tensor/index.js';
import { ggufUnsupported, readModelConfig } from '../src/models/index.js';
import { quantizeModel, QUANTIZE_REFERENCE } from '../src/quant/quantize-model.js';
import { tempDir } from './helpers/temp.js';

/*
 * Every family llama.cpp has an architecture for, exported to GGUF from the transformers-checked fixtures, runs in
 * llama.cpp (node-llama-cpp's prebuilt binary) and greedy-decodes the same tokens as our engine runs from a GPTQ
 * checkpoint of the same quantized layers. A wrong name, row order, norm shift or metadata key either fails
 * llama.cpp's loader or changes the tokens.
 */

const ROOT = join(import.meta.dirname, 'fixtures', 'families');
const PROMPT = [1, 17, 42, 99, 3];

interface Case {
  fixture: string;
  arch: string;
  /** config.json fields changed for llama.cpp (what its architecture fixes) */
  edit?: Record<string, unknown>;
  tokens?: number;
  bits?: 4 | 8;
  /** the context_length the file must state, where it is not max_position_embeddings */
  context?: number;
}

const CASES: Case[] = [
  { fixture: 'llama', arch: 'llama', bits: 4 },
  { fixture: 'llama-bias', arch: 'llama' },
  { fixture: 'llama-head-dim', arch: 'llama' },
  { fixture: 'llama-tied', arch: 'llama' },
  { fixture: 'llama-rope-linear', arch: 'llama' },
  { fixture: 'llama-rope-llama3', arch: 'llama' },
  // a window of 16: the file's context is capped there, and the test stays inside it
  { fixture: 'mistral', arch: 'llama', tokens: 10, context: 16 },
  { fixture: 'qwen2', arch: 'qwen2', bits: 4 },
  { fixture: 'qwen3', arch: 'qwen3' },
  { fixture: 'phi3', arch: 'phi3' },
  { fixture: 'phi3-partial-rotary', arch: 'phi3' },
  { fixture: 'gemma', arch: 'gemma', bits: 4 },
  // llama.cpp scales Gemma 2/3 attention by 1/sqrt(head_dim) whatever query_pre_attn_scalar says
  { fixture: 'gemma2', arch: 'gemma2', edit: { query_pre_attn_scalar: 16 } },
  { fixture: 'gemma3_text', arch: 'gemma3', edit: { query_pre_attn_scalar: 16 } },
  { fixture: 'granite', arch: 'granite' },
  { fixture: 'olmo2', arch: 'olmo2' },
  { fixture: 'bloom', arch: 'bloom', bits: 4 },
  { fixture: 'gpt2', arch: 'gpt2' },
  // llama.cpp's GELU is the tanh approximation; the fixture's erf GELU would differ slightly
  { fixture: 'gpt_neox', arch: 'gptneox', edit: { hidden_act: 'gelu_new' } },
  { fixture: 'falcon', arch: 'falcon', edit: { activation: 'gelu_new' } },
  { fixture: 'falcon-mqa', arch: 'falcon', edit: { activation: 'gelu_new' } },
];

function prepare(c: Case): string {
  const dir = join(tempDir(`ggufam-${c.fixture}-`), 'model');
  cpSync(join(ROOT, c.fixture), dir, { recursive: true });
  if (c.edit) {
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, ...c.edit }));
  }
  writeByteTokenizer(dir);
  return dir;
}

/** Softmax of each row of logits [rows, vocab]. */
function softmaxRows(logits: Float32Array, vocab: number): Float32Array {
  const p = new Float32Array(logits.length);
  for (let r = 0; r < logits.length / vocab; r++) {
    const row = logits.subarray(r * vocab, (r + 1) * vocab);
    const max = row.reduce((m, x) => Math.max(m, x), -Infinity);
    let sum = 0;
    for (let i = 0; i < vocab; i++) sum += p[r * vocab + i] = Math.exp(row[i]! - max);
    for (let i = 0; i < vocab; i++) p[r * vocab + i]! /= sum;
  }
  return p;
}

const ONLY = process.env['GGUF_FAMILIES']?.split(',');

test('each llama.cpp architecture: our GGUF loads in llama.cpp, which predicts what our engine predicts at every step', async () => {
  const llama = await getLlama({ gpu: false, build: 'never' });
  const backend = await getBackend();
  const failures: string[] = [];
  for (const c of CASES.filter((x) => !ONLY || ONLY.includes(x.fixture))) {
    const dir = prepare(c);
    const bits = c.bits ?? 8;
    const opts = { ...QUANTIZE_REFERENCE, method: 'rtn' as const, bits, groupSize: 32, sym: true };
    const { layers, config } = await quantizeModel(dir, backend, opts, undefined);
    const file = join(dir, '..', 'model.gguf');
    const tokenizer = loadTokenizer(dir);
    await writeGguf(dir, config, tokenizer, layers, file);

    // llama.cpp decodes greedily, reporting its next-token distribution at each step
    const lm = await llama.loadModel({ modelPath: file });
    assert.equal(lm.fileInfo.metadata.general.architecture, c.arch, c.fixture);
    assert.equal(lm.trainContextSize, c.context ?? config.maxPositions, `${c.fixture}: context_length`);
    // a float32 KV cache (llama.cpp's default is F16), so the two engines differ only in the weights' activations
    const ctx = await lm.createContext({ contextSize: 64, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
    const tokens: number[] = [];
    const theirs: Map<number, number>[] = [];
    for await (const out of ctx.getSequence().evaluateWithMetadata(PROMPT as never, { probabilities: true }, { temperature: 0 })) {
      tokens.push(out.token as number);
      theirs.push(out.probabilities as Map<number, number>);
      if (tokens.length === (c.tokens ?? 16)) break;
    }
    // (llama.cpp stops early at an end-of-generation token)
    const steps = tokens.length;
    await ctx.dispose();
    await lm.dispose();

    // our engine, on a GPTQ checkpoint of the same layers, over the same sequence
    const packed = join(dir, '..', 'gptq');
    await writeGptqCheckpoint(dir, packed, layers, { format: 'gptq_v2', floatDtype: 'F32', maxShardBytes: 2 ** 40, quant: opts });
    writeByteTokenizer(packed);
    const seq = [...PROMPT, ...tokens.slice(0, -1)];
    const V = config.vocabSize;
    const predict = async (activations: 'fp32' | 'int8'): Promise<Float32Array> => {
      const m = (await loadModel(packed, { activations })).model;
      return softmaxRows(await m.logits(await m.hidden(seq, 1, seq.length), seq.length), V);
    };
    const fp32 = await predict('fp32');
    const int8 = await predict('int8');
    const kl = (p: (i: number) => number, q: Float32Array, s: number): number => {
      let d = 0;
      for (let i = 0; i < V; i++) {
        const pi = p(i);
        if (pi > 0) d += pi * Math.log(pi / Math.max(q[(PROMPT.length - 1 + s) * V + i]!, 1e-30));
      }
      return d;
    };
    // llama.cpp quantizes activations to 8 bits for its Q4_0/Q8_0 dot products; we multiply in float32. So llama.cpp's
    // predictions may differ from ours as much as our own 8-bit-activation run does (KL, mean over the steps), and no
    // more: a misplaced row, norm or key costs orders of magnitude more.
    let drift = 0;
    let noise = 0;
    for (let s = 0; s < steps; s++) {
      drift += kl((i) => theirs[s]!.get(i) ?? 0, fp32, s) / steps;
      noise += kl((i) => int8[(PROMPT.length - 1 + s) * V + i]!, fp32, s) / steps;
    }
    if (process.env['GGUF_DEBUG']) console.log(c.fixture, drift, noise);
    if (drift > 2 * noise + 0.002)
      failures.push(`${c.fixture}: KL(llama.cpp || ours) ${drift.toFixed(5)}, ours int8 vs fp32 ${noise.toFixed(5)}`);
  }
  assert.deepEqual(failures, []);
});

test('what llama.cpp would compute differently is refused by name', () => {
  const cases: [string, Record<string, unknown> | undefined, RegExp][] = [
    ['opt', undefined, /llama\.cpp has no architecture for model_type opt/],
    ['llama-rope-yarn', undefined, /RoPE type yarn is not written to llama\.cpp's llama/],
    ['llama-rope-dynamic', undefined, /RoPE type dynamic/],
    ['phi3-longrope', undefined, /RoPE type longrope/],
    ['llama-gelu', undefined, /llama\.cpp's llama computes silu, not gelu_tanh/],
    ['gemma2', undefined, /attention scaled by 0\.17677\d* \(llama\.cpp's gemma2 scales by 0\.25 here\)/],
    [
      'gemma2',
      { attn_logit_softcapping: null, query_pre_attn_scalar: 16 },
      /llama\.cpp's gemma2 has no attention soft-capping|always soft-caps/,
    ],
    ['falcon', { parallel_attn: false, new_decoder_architecture: false }, /runs attention and the MLP in parallel/],
    ['gpt_neox', { attention_bias: false }, /llama\.cpp's gptneox needs a bias on every linear layer/],
    ['gpt_neox', { tie_word_embeddings: true }, /needs its own output head/],
    ['qwen3', { attention_bias: true }, /reads biases of q, k and v only/],
  ];
  for (const [fixture, edit, msg] of cases) {
    const dir = prepare({ fixture, arch: '', ...(edit ? { edit } : {}) });
    const why = ggufUnsupported(readModelConfig(dir));
    assert.match(why ?? 'accepted', msg, fixture);
  }
});

test('a tokenizer with fewer ids than the embedding has rows is padded with unused tokens, as llama.cpp requires', async () => {
  const dir = prepare({ fixture: 'llama', arch: 'llama' });
  // the byte-level tokenizer without its last 6 ids
  const json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> } };
  json.model.vocab = Object.fromEntries(Object.entries(json.model.vocab).filter(([, id]) => id < 250));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(json));
  const opts = { ...QUANTIZE_REFERENCE, method: 'rtn' as const, bits: 8, groupSize: 32, sym: true };
  const { layers, config } = await quantizeModel(dir, await getBackend(), opts, undefined);
  const file = join(dir, '..', 'model.gguf');
  await writeGguf(dir, config, loadTokenizer(dir), layers, file);
  const llama = await getLlama({ gpu: false, build: 'never' });
  const lm = await llama.loadModel({ modelPath: file });
  const tokens = lm.fileInfo.metadata.tokenizer.ggml.tokens;
  assert.equal(tokens.length, 256);
  assert.equal(tokens[255], '[PAD255]');
  await lm.dispose();
});
