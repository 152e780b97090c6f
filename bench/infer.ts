import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { getLlama } from 'node-llama-cpp';
import * as ort from 'onnxruntime-node';
import { seededRandom } from '../src/calib/windows.js';
import { writeGguf } from '../src/formats/gguf.js';
import { writeGptqCheckpoint } from '../src/formats/gptq.js';
import { generate } from '../src/infer/generate.js';
import { parseModelConfig, readModelConfig } from '../src/models/index.js';
import { writeSafetensors, type TensorToWrite } from '../src/io/safetensors.js';
import { pullStories15m } from '../src/io/stories.js';
import { roundToHalf } from '../src/io/fp16.js';
import { linearGroups, linearShape, preparedBytes } from '../src/models/index.js';
import { loadModel, loadTokenizer, type LoadOptions } from '../src/models/load.js';
import { quantizeModel, QUANTIZE_REFERENCE } from '../src/quant/quantize-model.js';
import { getBackend, type ActivationPrecision, type LinearKernel, type PackedLinearWeights } from '../src/tensor/index.js';
import { encodeModel, ElemType } from '../src/tensor/onnx-graph.js';
import { encodeFloatLinear, encodePackedLinear, openLinear, type EncodedLinear } from '../src/tensor/ort.js';
import { printTable } from './table.js';
import { nativeIsa, nativeLinear } from '../src/tensor/native.js';

/**
 * Packed inference: matvec speed against float32 and the machine's memory bandwidth, generation tokens/s
 * against llama.cpp on the same weights, and resident memory. `npm run bench:infer` (`-- --quick` skips the
 * stories110M-shaped model).
 */

const MB = 2 ** 20;

// Child mode: load one model and report how much resident memory it added.
if (process.argv[2] === '--rss') {
  const before = process.memoryUsage().rss;
  const { model } = await loadModel(process.argv[3]!, { activations: process.argv[4] as ActivationPrecision });
  // one token through the model: onnxruntime releases its load-time buffers after a session's first run
  await model.logits(await model.hidden([1], 1, 1), 1);
  (globalThis as { gc?: () => void }).gc?.();
  const linearBytes = model.blocks.reduce((s, b) => s + preparedBytes(b), 0);
  console.log(JSON.stringify({ rss: process.memoryUsage().rss - before, linearBytes }));
  process.exit(0);
}

const backend = await getBackend();
const quick = process.argv.includes('--quick');

/** Read bandwidth: onnxruntime summing a 2 GB tensor on all cores (larger than any cache), best of 3. */
async function bandwidthGBs(): Promise<number> {
  const n = 512 * MB;
  const model = encodeModel(
    [{ opType: 'ReduceSum', inputs: ['x'], outputs: ['y'], intAttrs: { keepdims: 0 } }],
    [{ name: 'x', elemType: ElemType.FLOAT, dims: [n] }],
    [{ name: 'y', elemType: ElemType.FLOAT, dims: [] }],
  );
  const s = await ort.InferenceSession.create(model, { intraOpNumThreads: availableParallelism() });
  const x = new ort.Tensor('float32', new Float32Array(n).fill(1), [n]);
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    await s.run({ x });
    best = Math.min(best, performance.now() - t);
  }
  await s.release();
  return (n * 4) / (best / 1000) / 1e9;
}

/** Random packed weights: any bit pattern is a valid GPTQ code, so random words are random codes. */
function randomPacked(rows: number, cols: number, bits: number, groupSize: number, seed: number): PackedLinearWeights {
  const rnd = seededRandom(seed);
  const G = Math.ceil(cols / groupSize);
  const word = (): number => (rnd() * 2 ** 32) | 0;
  return {
    rows,
    cols,
    bits,
    qweight: Int32Array.from({ length: ((cols * bits) / 32) * rows }, word),
    qzeros: Int32Array.from({ length: (G * rows * bits) / 32 }, word),
    // float16 values, as a checkpoint stores them (the native kernel keeps such scales in 16 bits)
    scales: Float32Array.from({ length: G * rows }, () => roundToHalf(0.001 + 0.01 * rnd())),
    gIdx: Int32Array.from({ length: cols }, (_, c) => Math.floor(c / groupSize)),
  };
}

/**
 * Median ms of y = W·x for m rows of x, cycling through copies of the layer (at least 1 GB of weights: this VM
 * reports a 512 MB L3) so that each call reads its weights from memory.
 */
async function matvecMs(open: () => Promise<LinearKernel>, m = 1): Promise<{ ms: number; bytes: number }> {
  const copies: LinearKernel[] = [await open()];
  while (copies.length * copies[0]!.weightBytes < 1024 * MB) copies.push(await open());
  const x = Float32Array.from({ length: m * copies[0]!.cols }, (_, i) => Math.sin(i));
  for (const k of copies) await k.apply(x, m);
  const times: number[] = [];
  for (let rep = 0; rep < 5; rep++) {
    const t = performance.now();
    for (const k of copies) await k.apply(x, m);
    times.push((performance.now() - t) / copies.length);
  }
  const bytes = copies[0]!.weightBytes;
  for (const k of copies) await k.dispose();
  return { ms: times.sort((a, b) => a - b)[2]!, bytes };
}

const onOrt = (e: EncodedLinear) => () => openLinear(e);
const onNative = (p: PackedLinearWeights) => async () => nativeLinear(p)!;

const reduceGBs = await bandwidthGBs();
// the float32 matvec itself streams faster than ReduceSum here, so the reference is the best read rate seen
let bestRead = reduceGBs;
const matvecRows: (string | number)[][] = [];
const gbsOfRow: number[] = [];
for (const [rows, cols] of [
  [4096, 4096],
  [11008, 4096],
] as const) {
  const rnd = seededRandom(rows);
  const w = Float32Array.from({ length: rows * cols }, () => rnd() - 0.5);
  const fp = await matvecMs(onOrt(encodeFloatLinear(w, rows, cols)));
  const row = (kernel: string, r: { ms: number; bytes: number }): (string | number)[] => {
    const gbs = r.bytes / (r.ms / 1000) / 1e9;
    gbsOfRow.push(gbs);
    return [`${rows}x${cols}`, kernel, r.ms.toFixed(3), (r.bytes / MB).toFixed(1), gbs.toFixed(1), '', (fp.ms / r.ms).toFixed(2)];
  };
  bestRead = Math.max(bestRead, fp.bytes / (fp.ms / 1000) / 1e9);
  matvecRows.push(row('fp32', fp));
  for (const activations of ['fp32', 'int8'] as const) {
    for (const bits of [2, 3, 4, 8]) {
      const p = randomPacked(rows, cols, bits, 128, bits);
      matvecRows.push(row(`w${bits} g128, ${activations} act`, await matvecMs(onOrt(encodePackedLinear(p, activations)!))));
      if ((bits === 4 || bits === 8) && activations === 'int8' && nativeIsa())
        matvecRows.push(row(`w${bits} g128, int8 act, native (${nativeIsa()})`, await matvecMs(onNative(p))));
    }
  }
}
matvecRows.forEach((r, i) => (r[5] = `${((100 * gbsOfRow[i]!) / bestRead).toFixed(0)}%`));
// The same 4-bit layer for several rows of x at once (a prompt's prefill): per row, the two kernels alternated
const batchRows: (string | number)[][] = [];
if (nativeIsa()) {
  const p = randomPacked(4096, 4096, 4, 128, 4);
  const e = encodePackedLinear(p, 'int8')!;
  for (const m of [1, 2, 4, 16, 64, 256]) {
    const [ort1, nat] = [await matvecMs(onOrt(e), m), await matvecMs(onNative(p), m)];
    const gmacs = (r: { ms: number }): string => ((m * 4096 * 4096) / (r.ms / 1000) / 1e9).toFixed(0);
    batchRows.push([m, ort1.ms.toFixed(3), gmacs(ort1), nat.ms.toFixed(3), gmacs(nat), (ort1.ms / nat.ms).toFixed(2)]);
  }
}

printTable(
  `Matvec y = W·x (batch 1) on onnxruntime, weights streamed from memory; "of bw" is against the best read rate measured: ${bestRead.toFixed(1)} GB/s (ReduceSum over 2 GB: ${reduceGBs.toFixed(1)})`,
  ['shape', 'kernel', 'ms', 'weight MB', 'GB/s', 'of bw', 'x fp32'],
  matvecRows,
);
if (batchRows.length)
  printTable(
    `4096x4096 w4 g128, int8 activations, m rows of x a call: onnxruntime's MatMulNBits against the native kernel (${nativeIsa()}), ms a call and GMAC/s`,
    ['m', 'MatMulNBits ms', 'GMAC/s', 'native ms', 'GMAC/s', 'native speed-up'],
    batchRows,
  );

/** A random-weight float Llama directory with the given shape (tokenizer borrowed from stories15M). */
async function randomModel(
  dir: string,
  shape: { dim: number; hidden: number; layers: number; heads: number; vocab: number; ctx: number },
): Promise<void> {
  if (existsSync(join(dir, 'model.safetensors'))) return;
  mkdirSync(dir, { recursive: true });
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: shape.dim,
    intermediate_size: shape.hidden,
    num_hidden_layers: shape.layers,
    num_attention_heads: shape.heads,
    num_key_value_heads: shape.heads,
    vocab_size: shape.vocab,
    max_position_embeddings: shape.ctx,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    hidden_act: 'silu',
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const cfg = parseModelConfig(config, 'random');
  const rnd = seededRandom(110);
  const tensors = new Map<string, TensorToWrite>();
  const dense = (name: string, r: number, c: number): void => {
    const a = 1 / Math.sqrt(c);
    tensors.set(name, { dtype: 'F32', shape: [r, c], data: Float32Array.from({ length: r * c }, () => a * (2 * rnd() - 1)) });
  };
  const ones = (name: string): void =>
    void tensors.set(name, { dtype: 'F32', shape: [shape.dim], data: new Float32Array(shape.dim).fill(1) });
  dense('model.embed_tokens.weight', shape.vocab, shape.dim);
  for (let l = 0; l < shape.layers; l++) {
    ones(`model.layers.${l}.input_layernorm.weight`);
    ones(`model.layers.${l}.post_attention_layernorm.weight`);
    for (const n of linearGroups(cfg).flat()) dense(`model.layers.${l}.${n}.weight`, ...linearShape(cfg, n));
  }
  ones('model.norm.weight');
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  const src = await pullStories15m();
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) if (existsSync(join(src, f))) copyFileSync(join(src, f), join(dir, f));
}

/** A float model quantized w4 g32 sym (RTN: speed does not depend on how the codes were chosen) as GPTQ and Q4_0 GGUF. */
async function quantized(dir: string): Promise<{ gptq: string; gguf: string }> {
  const out = { gptq: `${dir}-w4g32`, gguf: `${dir}-w4g32.gguf` };
  if (existsSync(out.gptq) && existsSync(out.gguf)) return out;
  const opts = { ...QUANTIZE_REFERENCE, method: 'rtn' as const, bits: 4, groupSize: 32, sym: true };
  const { layers, config } = await quantizeModel(dir, backend, opts, undefined);
  await writeGptqCheckpoint(dir, out.gptq, layers, { format: 'gptq_v2', floatDtype: 'F32', maxShardBytes: 2 ** 40, quant: opts });
  await writeGguf(dir, config, loadTokenizer(dir), layers, out.gguf);
  return out;
}

const PROMPT = 'Once upon a time';
const TOKENS = 128;

async function oursTokensPerSecond(dir: string, opts: LoadOptions): Promise<number> {
  const { model, tokenizer } = await loadModel(dir, opts);
  const prompt = tokenizer.encode(PROMPT);
  await generate(model, prompt, { maxTokens: 8, stop: [] });
  const r = await generate(model, prompt, { maxTokens: TOKENS, stop: [] });
  return r.tokensPerSecond;
}

/** llama.cpp greedy decoding of the same prompt, best over 1 and all threads. */
async function llamaCppTokensPerSecond(gguf: string, prompt: number[], contextSize: number): Promise<{ tps: number; threads: number }> {
  const llama = await getLlama({ gpu: false, build: 'never' });
  const lm = await llama.loadModel({ modelPath: gguf });
  let best = { tps: 0, threads: 0 };
  for (const threads of [1, availableParallelism()]) {
    const ctx = await lm.createContext({ contextSize, threads });
    const seq = ctx.getSequence();
    const t0 = performance.now();
    let n = 0;
    for await (const t of seq.evaluate(prompt as never, { temperature: 0 })) {
      void t;
      if (++n === TOKENS) break;
    }
    const tps = n / ((performance.now() - t0) / 1000);
    if (tps > best.tps) best = { tps, threads };
    await ctx.dispose();
  }
  await lm.dispose();
  return best;
}

/** Resident MB a loaded model adds (after one token) and the MB its linear-layer kernels hold. */
function residentMB(dir: string, activations: ActivationPrecision): { rss: number; linear: number } {
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', 'bench/infer.ts', '--rss', dir, activations], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(r.stderr);
  const { rss, linearBytes } = JSON.parse(r.stdout.trim().split('\n').pop()!) as { rss: number; linearBytes: number };
  return { rss: rss / MB, linear: linearBytes / MB };
}

const cache = join(process.env['GPTQ_TS_CACHE'] ?? join(tmpdir(), 'gptq-ts-bench'), 'models');
const models: [string, string][] = [['stories15M', await pullStories15m()]];
if (!quick) {
  const dir = join(cache, 'random-stories110m-shape');
  await randomModel(dir, { dim: 768, hidden: 2048, layers: 12, heads: 12, vocab: 32000, ctx: 1024 });
  models.push(['random, stories110M shape', dir]);
}
const genRows: (string | number)[][] = [];
const memRows: (string | number)[][] = [];
for (const [name, dir] of models) {
  const q = await quantized(dir);
  const cfg = readModelConfig(dir);
  const prompt = loadTokenizer(dir).encode(PROMPT);
  const cpp = await llamaCppTokensPerSecond(q.gguf, prompt, cfg.maxPositions);
  const fp = await oursTokensPerSecond(dir, {});
  const w4 = await oursTokensPerSecond(q.gptq, { activations: 'fp32' });
  const w4i8 = await oursTokensPerSecond(q.gptq, { activations: 'int8' });
  genRows.push(
    [name, 'gptq-ts fp32', fp.toFixed(1), (fp / cpp.tps).toFixed(2)],
    [name, 'gptq-ts w4 g32 packed, fp32 act', w4.toFixed(1), (w4 / cpp.tps).toFixed(2)],
    [name, 'gptq-ts w4 g32 packed, int8 act', w4i8.toFixed(1), (w4i8 / cpp.tps).toFixed(2)],
    [name, `llama.cpp Q4_0 (${cpp.threads} thread${cpp.threads > 1 ? 's' : ''})`, cpp.tps.toFixed(1), '1.00'],
  );
  const fpMB = residentMB(dir, 'fp32');
  const w4MB = residentMB(q.gptq, 'int8');
  memRows.push([
    name,
    fpMB.linear.toFixed(1),
    w4MB.linear.toFixed(1),
    (w4MB.linear / fpMB.linear).toFixed(3),
    fpMB.rss.toFixed(0),
    w4MB.rss.toFixed(0),
    (w4MB.rss / fpMB.rss).toFixed(2),
  ]);
}
printTable(
  `Greedy generation, ${TOKENS} tokens after "${PROMPT}" (tokens/s, including the prompt's prefill)`,
  ['model', 'engine', 'tokens/s', 'vs llama.cpp'],
  genRows,
);
printTable(
  'Memory: MB held by the linear-layer kernels, and resident MB the loaded model adds after one token (embeddings and LM head stay float32 in both; the head is held twice, in JS for lookups/eval and in onnxruntime for logits)',
  ['model', 'linear fp32 MB', 'linear w4 MB', 'ratio', 'RSS fp32 MB', 'RSS w4 MB', 'ratio'],
  memRows,
);
