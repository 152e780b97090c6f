import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { getLlama, type Llama } from 'node-llama-cpp';
import { calibrationWindows } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { writeGguf } from '../src/formats/gguf.js';
import { writeGptqCheckpoint } from '../src/formats/gptq.js';
import { generate } from '../src/infer/generate.js';
import { pullStories15m } from '../src/io/stories.js';
import type { Decoder, PreparedBlock } from '../src/models/decoder.js';
import { loadModel } from '../src/models/load.js';
import { quantizeModel, QUANTIZE_REFERENCE } from '../src/quant/quantize-model.js';
import { tempDir } from './helpers/temp.js';

/*
 * The exported GGUF runs in llama.cpp (node-llama-cpp's prebuilt binary) and greedy-decodes the same tokens as
 * our engine on the same quantized weights.
 */
for (const bits of [4, 8]) {
  test(`GPTQ w${bits} g32 sym as ${bits === 4 ? 'Q4_0' : 'Q8_0'} GGUF: llama.cpp and our engine agree on 24 greedy tokens`, async () => {
    const dir = await pullStories15m();
    const { model, tokenizer } = await loadModel(dir);
    const windows = calibrationWindows(tokenizer.encode((await loadText('sotu-calib')).slice(0, 100_000)), 8, 256, 0);
    const opts = { ...QUANTIZE_REFERENCE, bits, groupSize: 32, sym: true };
    const { layers, config } = await quantizeModel(dir, model.backend, opts, { windows, seqlen: 256 });
    const file = join(tempDir('gguf-'), 'model.gguf');
    await writeGguf(dir, config, tokenizer, layers, file);

    // our engine runs the same layers from a GPTQ checkpoint on its packed kernels
    const packedDir = join(tempDir('gptq-'), 'model');
    await writeGptqCheckpoint(dir, packedDir, layers, { format: 'gptq_v2', floatDtype: 'F32', maxShardBytes: 2 ** 40, quant: opts });
    const ours = (await loadModel(packedDir)).model;
    const prompt = tokenizer.encode('Once upon a time');
    const want = (await generate(ours, prompt, { maxTokens: 24 })).tokens;

    const llama = await getLlama({ gpu: false, build: 'never' });
    const lm = await llama.loadModel({ modelPath: file });
    assert.deepEqual(Array.from(lm.tokenize('Once upon a time')), prompt.slice(1), 'llama.cpp tokenizes with our vocabulary and merges');
    const ctx = await lm.createContext({ contextSize: 256 });
    const got: number[] = [];
    for await (const t of ctx.getSequence().evaluate(prompt as never, { temperature: 0 })) {
      got.push(t as number);
      if (got.length === want.length) break;
    }
    await ctx.dispose();
    await lm.dispose();
    assert.deepEqual(got, want);
  });
}

test('GGUF export refuses settings it cannot hold exactly, before any work', () => {
  const parent = tempDir('ggufbad-');
  const out = join(parent, 'x.gguf');
  const run = (...a: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'quantize', 'stories15m', '--format', 'gguf', '--out', out, ...a], {
      encoding: 'utf8',
    });
  for (const [args, msg] of [
    [['--bits', '3', '--group-size', '32', '--sym'], /not 3-bit/],
    [['--bits', '4', '--group-size', '64', '--sym'], /--group-size 32 \(got 64\)/],
    [['--bits', '4', '--group-size', '32', '--asym'], /--sym/],
    [['--bits', '4', '--group-size', '32', '--sym', '--act-order'], /add --static-groups/],
    [['--gguf-type', 'IQ2_XXS'], /--gguf-type IQ2_XXS: llama-quantize's IQ2_XXS needs types/],
    [['--gguf-type', 'Q4_K_M', '--token-embedding-type', 'f16'], /token_embd.weight as F16 is not implemented/],
    [['--pure'], /--pure is an option of --gguf-type/],
    [['--gguf-type', 'q4_k', '--act-order'], /llama\.cpp blocks are runs of contiguous columns: no --act-order/],
    [['--gguf-type', 'Q7_K'], /--gguf-type "Q7_K" is not one of Q4_0, Q4_1/],
    [['--gguf-type', 'Q4_K', '--format', 'gptq'], /--gguf-type Q4_K_M is written as --format gguf \(or fake\), not gptq/],
    [['--gguf-type', 'Q4_K', '--method', 'gptqt', '--bits', '2'], /--method gptqt has its own binary coding/],
  ] as [string[], RegExp][]) {
    const r = run(...args);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr.trim(), msg);
    assert.equal(r.stderr.trim().split('\n').length, 1);
  }
  assert.equal(existsSync(out), false);
  assert.deepEqual(readdirSync(parent), []);
});

test('GGUF export refuses, before any work, a tokenizer llama.cpp would run differently (a pre-tokenizer it lacks)', async () => {
  const { cpSync, writeFileSync: write, readFileSync: read } = await import('node:fs');
  const { gunzipSync } = await import('node:zlib');
  const parent = tempDir('ggufbpe-');
  const model = join(parent, 'model');
  cpSync(await pullStories15m(), model, { recursive: true });
  const gpt2 = JSON.parse(gunzipSync(read(join(import.meta.dirname, 'fixtures/tokenizers/gpt2/tokenizer.json.gz'))).toString()) as object;
  // GPT-2's byte-level BPE, but with a leading space added: llama.cpp has no such pre-tokenizer
  write(
    join(model, 'tokenizer.json'),
    JSON.stringify({ ...gpt2, pre_tokenizer: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true } }),
  );
  for (const f of ['tokenizer_config.json', 'special_tokens_map.json'])
    cpSync(join(import.meta.dirname, 'fixtures/tokenizers/gpt2/tokenizer_config.json'), join(model, f));
  const r = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      'src/cli/entry.ts',
      'quantize',
      model,
      '--bits',
      '4',
      '--group-size',
      '32',
      '--format',
      'gguf',
      '--out',
      join(parent, 'x.gguf'),
    ],
    { encoding: 'utf8' },
  );
  assert.notEqual(r.status, 0);
  assert.match(
    r.stderr.trim(),
    /^gptq: error: .*tokenizer\.json: its pre_tokenizer is none of llama\.cpp's \(gpt-2, llama-bpe, qwen2, deepseek-v3\)$/,
  );
  assert.equal(existsSync(join(parent, 'x.gguf')), false);
});

/**
 * Measured on stories15M: drift 1e-4 to 8e-4, and 2.6e-3 for Q2_K, on machines with AVX-512. On one with AVX2 only
 * (an AMD EPYC: llama.cpp's haswell build, onnxruntime's AVX2 kernels) every type stayed in that range but Q2_K,
 * 7.4e-3, and the same at d6494e3 and 0288452 as with the commits after them: the machine moved it, not a change of
 * ours. Q2_K's control is 2.3, so its relative bound (a quarter of that) is still 78 times its drift; its absolute
 * cap is its own. See the block-grid test.
 */
const DRIFT_MAX = 0.005;
const DRIFT_MAX_OF: Partial<Record<string, number>> = { Q2_K: 0.015 };
const DRIFT_OF_CONTROL = 0.25;

/**
 * llama.cpp's next-token distributions on a GGUF, decoding greedily from a prompt with a float32 KV cache (its default
 * is F16), so the engines differ only in how they multiply the same weights.
 */
async function llamaCppDistributions(
  llama: Llama,
  file: string,
  prompt: number[],
  steps = 16,
): Promise<{ tokens: number[]; probabilities: Map<number, number>[] }> {
  const lm = await llama.loadModel({ modelPath: file });
  const ctx = await lm.createContext({ contextSize: 128, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
  const tokens: number[] = [];
  const probabilities: Map<number, number>[] = [];
  for await (const out of ctx.getSequence().evaluateWithMetadata(prompt as never, { probabilities: true }, { temperature: 0 })) {
    tokens.push(out.token as number);
    probabilities.push(out.probabilities as Map<number, number>);
    if (tokens.length === steps) break;
  }
  await ctx.dispose();
  await lm.dispose();
  return { tokens, probabilities };
}

/** our engine's next-token distributions at the positions llama.cpp sampled from: seq = prompt + its tokens but the last */
async function ourDistributions(m: Decoder<PreparedBlock>, prompt: number[], tokens: number[]): Promise<Float32Array[]> {
  const seq = [...prompt, ...tokens.slice(0, -1)];
  const V = m.cfg.vocabSize;
  const logits = await m.logits(await m.hidden(seq, 1, seq.length), seq.length);
  return tokens.map((_, s) => {
    const row = logits.subarray((prompt.length - 1 + s) * V, (prompt.length + s) * V);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - max);
    return row.map((v) => Math.exp(v - max) / sum);
  });
}

/** mean over the steps of KL(llama.cpp ‖ ours) */
function meanKl(theirs: Map<number, number>[], ours: Float32Array[]): number {
  let d = 0;
  theirs.forEach((p, s) => {
    for (const [i, pi] of p) if (pi > 0) d += (pi * Math.log(pi / Math.max(ours[s]![i]!, 1e-30))) / theirs.length;
  });
  return d;
}

test('GPTQ on llama.cpp block grids: every type holds exactly the weights GPTQ evaluated, and llama.cpp runs the file', async () => {
  const { readGgufFileInfo } = await import('node-llama-cpp');
  const { BLOCK_LAYOUTS, dequantizeRow } = await import('../src/formats/ggml-blocks.js');
  const { blockTypeOf, dequantize } = await import('../src/quant/quantized-layer.js');
  const { ggufLayout } = await import('../src/models/index.js');
  const { readFileSync } = await import('node:fs');
  const dir = await pullStories15m();
  const { model, tokenizer } = await loadModel(dir);
  const windows = calibrationWindows(tokenizer.encode((await loadText('sotu-calib')).slice(0, 50_000)), 4, 128, 0);
  const llama = await getLlama({ gpu: false, build: 'never' });
  const types = ['Q4_K', 'Q6_K', 'Q3_K', 'Q2_K', 'Q5_K', 'Q4_1', 'Q5_0', 'Q5_1', 'IQ4_NL'] as const;
  const agreements: string[] = [];
  const failures: string[] = [];
  let previous: Decoder<PreparedBlock> = model;
  const made: string[] = [];
  for (const blockType of types) {
    const opts = { ...QUANTIZE_REFERENCE, blockType, sym: true };
    const { layers, config } = await quantizeModel(dir, model.backend, opts, { windows, seqlen: 128 });
    const file = join(tempDir('gguf-k-'), 'model.gguf');
    await writeGguf(dir, config, tokenizer, layers, file);
    const info = await readGgufFileInfo(file);
    const bytes = readFileSync(file);
    for (const t of ggufLayout(config).tensors) {
      const q = layers.get(t.source);
      if (!q) continue;
      const ti = info.fullTensorInfo!.find((x) => x.name === t.name)!;
      const type = blockTypeOf(q)!;
      // stories15M's 288-wide rows are not whole super-blocks: llama-quantize's fallback type (tensor_type_fallback)
      const fallback: Record<string, string> = { Q2_K: 'Q4_0', Q3_K: 'Q4_0', Q4_K: 'Q5_0', Q5_K: 'Q5_1', Q6_K: 'Q8_0' };
      assert.equal(type, q.cols % 256 === 0 ? blockType : (fallback[blockType] ?? blockType), t.name);
      const rowBytes = (q.cols / BLOCK_LAYOUTS[type].size) * BLOCK_LAYOUTS[type].bytes;
      const want = dequantize(q);
      for (let i = 0; i < q.rows; i++) {
        const r = t.rowOrder ? t.rowOrder[i]! : i;
        const row = dequantizeRow(
          type,
          new Uint8Array(bytes.buffer, bytes.byteOffset + Number(ti.fileOffset) + i * rowBytes, rowBytes),
          q.cols,
        );
        const bad = row.findIndex((v, c) => !Object.is(v, want[r * q.cols + c]));
        assert.equal(bad, -1, `${blockType} ${t.name} row ${i}: the file's weight differs from the evaluated one`);
      }
    }
    const lm = await llama.loadModel({ modelPath: file });
    assert.deepEqual(Array.from(lm.tokenize('Once upon a time')), tokenizer.encode('Once upon a time', { bos: false }));
    await lm.dispose();
    // The engines' disagreement on this file against a wrong-weight control: our engine on the previous type's file
    // (the float model for the first), the same model quantized differently. llama.cpp multiplies K-quant and
    // Q4_1/Q5/IQ4_NL weights with 8-bit quantized activations, so its drift is not zero; it must be a small
    // fraction of what one other set of weights moves, and small absolutely.
    const prompt = tokenizer.encode('Once upon a time');
    const theirs = await llamaCppDistributions(llama, file, prompt);
    const mine = (await loadModel(file)).model;
    const ours = await ourDistributions(mine, prompt, theirs.tokens);
    const drift = meanKl(theirs.probabilities, ours);
    const control = meanKl(theirs.probabilities, await ourDistributions(previous, prompt, theirs.tokens));
    if (process.env['GGUF_DEBUG']) console.log(blockType, { drift, control });
    agreements.push(`${blockType}: ${drift.toExponential(2)} vs ${control.toExponential(2)}`);
    if (!(drift < DRIFT_OF_CONTROL * control && drift < (DRIFT_MAX_OF[blockType] ?? DRIFT_MAX))) failures.push(agreements.at(-1)!);
    previous = mine;
    made.push(dirname(file));
  }
  for (const d of made) rmSync(d, { recursive: true });
  assert.deepEqual(failures, [], agreements.join('; '));
});

test("--gguf-type Q4_K_M: llama-quantize's mix, every tensor in the file (embedding included) is what our engine evaluates", async () => {
  const { readGgufFileInfo } = await import('node-llama-cpp');
  const { GGML_TYPES, dequantizeRow, BLOCK_LAYOUTS } = await import('../src/formats/ggml-blocks.js');
  const { dequantize } = await import('../src/quant/quantized-layer.js');
  const { ggufLayout, readModelConfig } = await import('../src/models/index.js');
  const { mixPlan } = await import('../src/quant/quantize-model.js');
  const { writeFakeQuant } = await import('../src/formats/fake-quant.js');
  const { SafetensorsModel } = await import('../src/io/safetensors.js');
  const { readFileSync } = await import('node:fs');
  const dir = await pullStories15m();
  const { model, tokenizer } = await loadModel(dir);
  const windows = calibrationWindows(tokenizer.encode((await loadText('sotu-calib')).slice(0, 50_000)), 4, 128, 0);
  const ggufMix = { mix: 'Q4_K_M' as const };
  const opts = { ...QUANTIZE_REFERENCE, sym: true, ggufMix };
  const { layers, config } = await quantizeModel(dir, model.backend, opts, { windows, seqlen: 128 });
  const parent = tempDir('gguf-mix-');
  const file = join(parent, 'model.gguf');
  await writeGguf(dir, config, tokenizer, layers, file);
  await writeFakeQuant(dir, join(parent, 'fake'), layers, {});
  const plan = mixPlan(readModelConfig(dir), ggufMix);
  const info = await readGgufFileInfo(file);
  const bytes = readFileSync(file);
  const fake = new SafetensorsModel(join(parent, 'fake'));
  const types = new Set<string>();
  for (const t of ggufLayout(config).tensors) {
    const ti = info.fullTensorInfo!.find((x) => x.name === t.name)!;
    const p = plan.get(t.source);
    if (!p || p.type === 'F32') {
      assert.equal(ti.ggmlType, 0, `${t.name} stays float32`);
      continue;
    }
    types.add(p.type);
    assert.equal(ti.ggmlType, GGML_TYPES[p.type], `${t.name}: the planned ${p.type}`);
    const q = layers.get(t.source)!;
    const want = dequantize(q);
    const rowBytes = (q.cols / BLOCK_LAYOUTS[p.type].size) * BLOCK_LAYOUTS[p.type].bytes;
    for (let i = 0; i < q.rows; i++) {
      const r = t.rowOrder ? t.rowOrder[i]! : i;
      const row = dequantizeRow(
        p.type,
        new Uint8Array(bytes.buffer, bytes.byteOffset + Number(ti.fileOffset) + i * rowBytes, rowBytes),
        q.cols,
      );
      const bad = row.findIndex((v, c) => !Object.is(v, want[r * q.cols + c]));
      assert.equal(bad, -1, `${t.name} row ${i}: the file's weight differs from the evaluated one`);
    }
    if (!p.linear) {
      // the engine reads the fake checkpoint's embedding (and tied head): the file's, bit for bit
      const stored = fake.readFloat(t.source, [q.rows, q.cols]);
      assert.equal(
        stored.findIndex((v, i) => !Object.is(v, want[i])),
        -1,
        `${t.source} in --format fake`,
      );
    }
  }
  fake.close();
  // stories15M's 288-wide rows: Q5_0 for Q4_K, Q8_0 for Q6_K (attn_v in use_more_bits layers, the tied embedding);
  // its 768-wide ffn_down rows are whole super-blocks: Q4_K and Q6_K
  assert.deepEqual([...types].sort(), ['Q4_K', 'Q5_0', 'Q6_K', 'Q8_0']);
  assert.equal(info.fullTensorInfo!.find((x) => x.name === 'token_embd.weight')!.ggmlType, GGML_TYPES.Q8_0);
  const llama = await getLlama({ gpu: false, build: 'never' });
  const lm = await llama.loadModel({ modelPath: file });
  assert.deepEqual(Array.from(lm.tokenize('Once upon a time')), tokenizer.encode('Once upon a time', { bos: false }));
  await lm.dispose();
});
