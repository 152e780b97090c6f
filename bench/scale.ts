import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { seededRandom } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { evaluate } from '../src/eval/perplexity.js';
import { generate } from '../src/infer/generate.js';
import { writeSafetensors, type TensorToWrite } from '../src/io/safetensors.js';
import { pullStories15m } from '../src/io/stories.js';
import { linearGroups, linearShape, parseModelConfig, readModelConfig, type KvCacheType, type ModelConfig } from '../src/models/index.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { writeGguf } from '../src/formats/gguf.js';
import { quantize } from '../src/pipeline.js';
import type { QuantizeTimings, StageSeconds } from '../src/quant/quantize-model.js';
import { getBackend } from '../src/tensor/index.js';
import { llamaTools, runLlamaTool } from './llama-tools.js';
import { llamaContext, median, PROMPT, promptTokens, timeLlamaCpp, timeOurs } from './decode-timing.js';
import { printTable } from './table.js';

/**
 * Quantize, evaluate and generate with random-weight bf16 checkpoints of real shapes (TinyLlama-1.1B; Llama-2-7B
 * and Llama-3-8B with 2 of their 32 layers), each step in its own child process so its peak RSS is its own. Prints
 * per-layer forward / Hessian / sweep seconds beside their flop floors at the sgemm rate measured in the same run,
 * the extrapolation to the whole model at 128 x 2048 calibration tokens, and eval / generate speed and memory
 * (against llama.cpp via node-llama-cpp on the same weights). Generation variants: ours with the head float (F16),
 * quantized (--lm-head, w4 g128) and at 8 bits (--lm-head-bits 8); llama.cpp on our Q4_0 GGUF export with the head
 * F32 or Q4_0, and on what its own llama-quantize makes of the float weights at Q4_0 (its mix: output.weight Q6_K;
 * the tools are found or built by bench/llama-tools.ts). They take turns for --gen-rounds rounds, each reporting its
 * median.
 *
 *   npm run bench:scale -- [--nsamples 4] [--seqlen 2048] [--cases tinyllama,llama2-7b,llama3-8b] [--layers N]
 *                          [--eval-windows 4] [--gen-tokens 32] [--gen-rounds 3] [--gen-prompt N] [--no-llama-cpp] [--dir DIR]
 *                          [--method rtn]
 *
 * The default 4 x 2048 tokens is the smallest run whose per-token costs are those of the paper's 128 x 2048: windows
 * of its length (attention grows with it) and one Hessian product of a full batch of 8192 rows per group (smaller
 * products cost more per row: at 4 x 512 the 7B shape's Hessians extrapolated to 280 s a layer, where the full
 * run measured 188).
 *
 * --gen-prompt N generates after the first N tokens of sotu-test instead of a four-word prompt: each decode step then
 * reads an N-row KV cache (the decode column leaves the prefill out).
 *
 * --method rtn rounds instead of running GPTQ (no calibration pass, Hessians or sweeps): the same packed checkpoint
 * layout, so eval and generate measure the same; the quantize table then times RTN.
 */

interface Shape {
  dim: number;
  hidden: number;
  layers: number;
  fullLayers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  ctx: number;
  ropeTheta: number;
}

const SHAPES: Record<string, Shape> = {
  tinyllama: { dim: 2048, hidden: 5632, layers: 22, fullLayers: 22, heads: 32, kvHeads: 4, vocab: 32000, ctx: 2048, ropeTheta: 10000 },
  'llama2-7b': { dim: 4096, hidden: 11008, layers: 2, fullLayers: 32, heads: 32, kvHeads: 32, vocab: 32000, ctx: 4096, ropeTheta: 10000 },
  'llama3-8b': { dim: 4096, hidden: 14336, layers: 2, fullLayers: 32, heads: 32, kvHeads: 8, vocab: 128256, ctx: 8192, ropeTheta: 500000 },
};

/** The paper's calibration set, what the extrapolation is for. */
const FULL_TOKENS = { nsamples: 128, seqlen: 2048 };

const KB = 1024;
const GB = 2 ** 30;

function configJson(s: Shape, layers: number): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: s.dim,
    intermediate_size: s.hidden,
    num_hidden_layers: layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    vocab_size: s.vocab,
    max_position_embeddings: s.ctx,
    rms_norm_eps: 1e-5,
    rope_theta: s.ropeTheta,
    tie_word_embeddings: false,
    hidden_act: 'silu',
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'bfloat16',
  };
}

/** A random bf16 Llama checkpoint (weights uniform with the std of a 1/√fan-in init), tokenizer from stories15M. */
async function makeCheckpoint(dir: string, s: Shape, layers: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const config = configJson(s, layers);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const cfg = parseModelConfig(config, dir);
  const rnd = seededRandom(16);
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  const tensors = new Map<string, TensorToWrite>();
  const bf16 = (v: number): number => {
    f32[0] = v;
    return (u32[0]! + 0x7fff + ((u32[0]! >>> 16) & 1)) >>> 16;
  };
  const dense = (name: string, r: number, c: number): void => {
    const a = Math.sqrt(3 / c);
    const data = new Uint16Array(r * c);
    for (let i = 0; i < data.length; i++) data[i] = bf16(a * (2 * rnd() - 1));
    tensors.set(name, { dtype: 'BF16', shape: [r, c], data });
  };
  const ones = (name: string): void => void tensors.set(name, { dtype: 'BF16', shape: [s.dim], data: new Uint16Array(s.dim).fill(0x3f80) });
  dense('model.embed_tokens.weight', s.vocab, s.dim);
  for (let l = 0; l < layers; l++) {
    ones(`model.layers.${l}.input_layernorm.weight`);
    ones(`model.layers.${l}.post_attention_layernorm.weight`);
    for (const n of linearGroups(cfg).flat()) dense(`model.layers.${l}.${n}.weight`, ...linearShape(cfg, n));
  }
  ones('model.norm.weight');
  dense('lm_head.weight', s.vocab, s.dim);
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  const src = await pullStories15m();
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) if (existsSync(join(src, f))) copyFileSync(join(src, f), join(dir, f));
}

/** Flop counts per block: forward over n tokens in windows of seq, the Hessians' XᵀX (one triangle), the sweeps. */
function floors(cfg: ModelConfig, nsamples: number, seqlen: number): { forward: number; hessian: number; sweep: number } {
  const n = nsamples * seqlen;
  let params = 0;
  let sweep = 0;
  let hessian = 0;
  for (const group of linearGroups(cfg)) {
    const cols = linearShape(cfg, group[0]!)[1];
    hessian += cols * cols * n;
    // factorization: Cholesky, triangular inverse and Cholesky of the inverse, n³/3 each
    sweep += cols ** 3;
    for (const name of group) {
      const [rows] = linearShape(cfg, name);
      params += rows * cols;
      // each column's error spread over the columns after it: rows·cols²/2 multiply-adds
      sweep += rows * cols * cols;
    }
  }
  // causal attention: q·kᵀ and p·v over half the seq x seq square, per head
  const attention = 2 * seqlen * seqlen * cfg.numHeads * cfg.headDim * nsamples;
  return { forward: 2 * params * n + attention, hessian, sweep };
}

async function sgemmFlops(): Promise<number> {
  const backend = await getBackend();
  const n = 2048;
  const rnd = seededRandom(1);
  const a = Float32Array.from({ length: n * n }, () => rnd() - 0.5);
  const b = Float32Array.from({ length: n * n }, () => rnd() - 0.5);
  let best = Infinity;
  for (let i = 0; i < 4; i++) {
    const t = performance.now();
    await backend.matmulNT(a, b, n, n, n);
    best = Math.min(best, performance.now() - t);
  }
  return (2 * n ** 3) / (best / 1000);
}

// ---- child steps: one per process, so each peak RSS is that step's own ----

type Report = Record<string, unknown>;

async function child(step: string, args: Record<string, string>): Promise<Report> {
  const maxRssGB = (): number => (process.resourceUsage().maxRSS * KB) / GB;
  switch (step) {
    case 'make': {
      const s = SHAPES[args.case!]!;
      await makeCheckpoint(args.dir!, s, Number(args.layers));
      return {};
    }
    case 'quantize': {
      const gguf = args.format === 'gguf';
      const { summary } = await quantize(
        args.dir!,
        {
          ...(gguf
            ? { method: 'rtn', bits: 4, groupSize: 32, sym: true, format: 'gguf' }
            : { method: args.method as 'gptq' | 'rtn', nsamples: Number(args.nsamples), seqlen: Number(args.seqlen) }),
          ...(args.lmhead ? { lmHead: true } : {}),
          ...(args.lmheadbits ? { lmHeadBits: Number(args.lmheadbits) } : {}),
        },
        args.out!,
        { warn: (m) => process.stderr.write(`warning: ${m}\n`) },
      );
      return { timings: summary.timings, rssGB: maxRssGB() };
    }
    case 'gguf-float': {
      // every tensor float32, the input llama-quantize expects (as convert_hf_to_gguf.py --outtype f32 writes it)
      await writeGguf(args.dir!, readModelConfig(args.dir!), loadTokenizer(args.dir!), new Map(), args.out!, { floatLinears: true });
      return {};
    }
    case 'eval': {
      const t0 = performance.now();
      const { model, tokenizer } = await loadModel(args.model!);
      const loadSeconds = (performance.now() - t0) / 1000;
      const loadGB = maxRssGB();
      const tokens = tokenizer.encode(await loadText('sotu-test'));
      const r = await evaluate(model, tokens, { windows: Number(args.windows), seqlen: Number(args.seqlen), batch: 1 });
      return { tokensPerSecond: r.tokens / r.seconds, ppl: r.ppl, loadSeconds, loadGB, rssGB: maxRssGB() };
    }
    case 'generate': {
      const t0 = performance.now();
      const { model, tokenizer } = await loadModel(args.model!, { activations: 'int8' });
      const loadSeconds = (performance.now() - t0) / 1000;
      const prompt = await promptTokens(args.prompt, (t) => tokenizer.encode(t));
      await generate(model, prompt.slice(0, 8), { maxTokens: 4, stop: [] });
      const rates = await timeOurs(model, prompt, Number(args.tokens), args.kv as KvCacheType | undefined);
      return { ...rates, loadSeconds, rssGB: maxRssGB() };
    }
    case 'llama-cpp': {
      const { getLlama } = await import('node-llama-cpp');
      const llama = await getLlama({ gpu: false, build: 'never' });
      const tl = performance.now();
      const lm = await llama.loadModel({ modelPath: args.model! });
      const prompt = await promptTokens(args.prompt, (t) => lm.tokenize(t));
      const ctx = await llamaContext(lm, prompt, Number(args.tokens));
      const loadSeconds = (performance.now() - tl) / 1000;
      const rates = await timeLlamaCpp(ctx, prompt, Number(args.tokens));
      await ctx.dispose();
      await lm.dispose();
      return { ...rates, loadSeconds, rssGB: maxRssGB() };
    }
  }
  throw new Error(`unknown step ${step}`);
}

if (process.argv[2] === '--child') {
  const report = await child(process.argv[3]!, JSON.parse(process.argv[4]!) as Record<string, string>);
  console.log(JSON.stringify(report));
  process.exit(0);
}

function runChild(step: string, args: Record<string, string | number>): Report | string {
  const strArgs = Object.fromEntries(Object.entries(args).map(([k, v]) => [k, String(v)]));
  // each child relaunches with the malloc tunables gptq itself picks for the step (bin/relaunch-tuned.js)
  const env: NodeJS.ProcessEnv = { ...process.env, GPTQ_TS_MALLOC: step === 'eval' || step === 'generate' ? 'inference' : 'quantize' };
  delete env.GLIBC_TUNABLES;
  const r = spawnSync(process.execPath, [...process.execArgv, 'bench/scale.ts', '--child', step, JSON.stringify(strArgs)], {
    env,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 64 * 2 ** 20,
  });
  if (r.status !== 0) return `failed (${r.signal ?? `exit ${r.status}`})`;
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Report;
}

// ---- the run ----

const { values: flags } = parseArgs({
  options: {
    nsamples: { type: 'string', default: process.env['SCALE_NSAMPLES'] ?? '4' },
    seqlen: { type: 'string', default: process.env['SCALE_SEQLEN'] ?? '2048' },
    cases: { type: 'string', default: Object.keys(SHAPES).join(',') },
    layers: { type: 'string' },
    'eval-windows': { type: 'string', default: '4' },
    'gen-tokens': { type: 'string', default: '32' },
    'gen-rounds': { type: 'string', default: '3' },
    'gen-prompt': { type: 'string' },
    'no-llama-cpp': { type: 'boolean', default: false },
    dir: { type: 'string' },
    method: { type: 'string', default: 'gptq' },
  },
});
const nsamples = Number(flags.nsamples);
const seqlen = Number(flags.seqlen);
const work = flags.dir ?? mkdtempSync(join(tmpdir(), 'gptq-ts-scale-'));
// the floors use the best sgemm rate seen, at the start and after each quantize step: the machine's speed drifts
// (122 to 172 GFLOP/s within an hour here), and a slow first reading would make every floor look closer
let rate = await sgemmFlops();
console.log(
  `sgemm 2048³ on this machine: ${(rate / 1e9).toFixed(0)} GFLOP/s; ${nsamples} x ${seqlen} calibration tokens; work dir ${work}`,
);

type Row = (string | number)[];
/** the quantize tables' rows, made once the rate is final */
const quantRows: (() => Row)[] = [];
const fullRows: (() => Row)[] = [];
const inferRows: (string | number)[][] = [];
const f = (x: number, d = 1): string => x.toFixed(d);
try {
  for (const name of flags.cases.split(',')) {
    const shape = SHAPES[name];
    if (!shape) throw new Error(`unknown case ${name} (${Object.keys(SHAPES).join(', ')})`);
    // --layers may go up to the real model's depth (the cases default to 2 of the 7B/8B's 32 to stay quick)
    const layers = Number(flags.layers ?? shape.layers);
    if (!Number.isInteger(layers) || layers < 1 || layers > shape.fullLayers) {
      throw new Error(`--layers ${flags.layers}: ${name} has 1 to ${shape.fullLayers} layers`);
    }
    // the layer count is in the name so a kept --dir never reuses a checkpoint of another depth
    const dir = join(work, `${name}-${layers}l`);
    const out = join(work, `${name}-${layers}l-w4g128`);
    if (!existsSync(join(dir, 'model.safetensors'))) runChild('make', { case: name, dir, layers });
    const cfg = parseModelConfig(configJson(shape, layers), dir);
    rmSync(out, { recursive: true, force: true });
    const label = `${name} (${layers} layers)`;
    const q = runChild('quantize', { dir, out, nsamples, seqlen, method: flags.method });
    rate = Math.max(rate, await sgemmFlops());
    if (typeof q === 'string') {
      quantRows.push(() => [label, q]);
      continue;
    }
    const t = q.timings as QuantizeTimings;
    const fl = floors(cfg, nsamples, seqlen);
    // a layer's cost is the last block's: the first also pays one-off costs (each kernel's and buffer's first use),
    // which the whole model pays once, not once a layer
    const [first, per] = [t.blocks[0]!, t.blocks.at(-1)!];
    quantRows.push(() => [
      label,
      `${f(per.forward)} / ${f(fl.forward / rate)}`,
      `${f(per.hessian)} / ${f(fl.hessian / rate)}`,
      `${f(per.sweep)} / ${f(fl.sweep / rate)}`,
      f(t.total),
      f(q.rssGB as number, 2),
    ]);
    // forward by its flop count (attention grows with seqlen²), Hessians by tokens; sweeps do not depend on tokens
    const full = floors(cfg, FULL_TOKENS.nsamples, FULL_TOKENS.seqlen);
    const scaled = (b: StageSeconds): StageSeconds => {
      const [forward, hessian] = [b.forward * (full.forward / fl.forward), b.hessian * (full.hessian / fl.hessian)];
      return { forward, hessian, sweep: b.sweep, total: forward + hessian + b.sweep };
    };
    const estimate = scaled(per);
    const perLayer = estimate.total;
    const fullFlop = full.forward + full.hessian + full.sweep;
    fullRows.push(() => [
      name,
      shape.fullLayers,
      f(estimate.forward),
      f(estimate.hessian),
      f(estimate.sweep),
      f((scaled(first).total + perLayer * (shape.fullLayers - 1)) / 3600, 2),
      f(((fullFlop / rate) * shape.fullLayers) / 3600, 2),
      f(perLayer / (fullFlop / rate), 2),
    ]);

    const evalSeq = Math.min(seqlen, shape.ctx);
    const ev = runChild('eval', { model: out, windows: flags['eval-windows'], seqlen: evalSeq });
    const row = (what: string, r: Report | string): (string | number)[] =>
      typeof r === 'string'
        ? [label, what, r, '', '', '', '']
        : [label, what, f(r.tokensPerSecond as number), '', '', f(r.loadSeconds as number), f(r.rssGB as number, 2)];
    inferRows.push(row(`eval w4 g128, ${flags['eval-windows']} x ${evalSeq}`, ev));

    // Generation: every variant is made first and then they run in turns, round after round. This machine's speed
    // drifts by a fifth from one minute to the next, so one reading each would compare moments, not programs.
    const variants: { what: string; step: 'generate' | 'llama-cpp'; model: string; made: Report | string }[] = [
      { what: 'generate w4 g128, head F16, int8 act', step: 'generate', model: out, made: q },
    ];
    // the head quantized as well (--lm-head, RTN: the same bytes as GPTQ's): a fifth of a token's bytes at 1.1B; at
    // 8 bits (--lm-head-bits 8) more precise than llama-quantize's Q6_K output, in fewer bytes than float16
    for (const [bits, suffix, what] of [
      [4, 'head', 'head w4 g128 (--lm-head)'],
      [8, 'head8', 'head w8 g128 (--lm-head-bits 8)'],
    ] as const) {
      const model = `${out}-${suffix}`;
      rmSync(model, { recursive: true, force: true });
      variants.push({
        what: `generate w4 g128, ${what}, int8 act`,
        step: 'generate',
        model,
        made: runChild('quantize', { dir, out: model, method: 'rtn', lmhead: 1, lmheadbits: bits }),
      });
    }
    if (!flags['no-llama-cpp']) {
      // our GGUF export keeps every tensor it does not quantize float32, the head included, unless --lm-head
      for (const [head, what] of [
        [false, 'llama.cpp Q4_0, output F32 (RTN, same weights)'],
        [true, 'llama.cpp Q4_0, output Q4_0 (RTN, same weights)'],
      ] as const) {
        const gguf = join(work, `${name}-q4_0${head ? '-head' : ''}.gguf`);
        rmSync(gguf, { force: true });
        const made = runChild('quantize', { dir, out: gguf, format: 'gguf', ...(head ? { lmhead: 1 } : {}) });
        variants.push({ what, step: 'llama-cpp', model: gguf, made });
      }
      // what a llama.cpp user gets: llama-quantize's Q4_0 mix from a float GGUF, which keeps output.weight in Q6_K
      const float = join(work, `${name}-f32.gguf`);
      const mix = join(work, `${name}-q4_0-mix.gguf`);
      rmSync(mix, { force: true });
      let made = runChild('gguf-float', { dir, out: float });
      if (typeof made !== 'string') {
        try {
          runLlamaTool(llamaTools(), 'llama-quantize', [float, mix, 'Q4_0', String(availableParallelism())]);
        } catch (e) {
          made = `failed (${(e as Error).message.split('\n')[0]})`;
        }
      }
      rmSync(float, { force: true });
      variants.push({ what: 'llama.cpp llama-quantize Q4_0 (its mix: output Q6_K)', step: 'llama-cpp', model: mix, made });
    }
    const readings = variants.map(() => [] as Report[]);
    const failures: (string | undefined)[] = variants.map((v) => (typeof v.made === 'string' ? v.made : undefined));
    for (let round = 0; round < Number(flags['gen-rounds']); round++) {
      variants.forEach((v, i) => {
        if (failures[i]) return;
        const r = runChild(v.step, {
          model: v.model,
          tokens: flags['gen-tokens'],
          ...(flags['gen-prompt'] ? { prompt: flags['gen-prompt'] } : {}),
        });
        if (typeof r === 'string') failures[i] = r;
        else readings[i]!.push(r);
      });
    }
    variants.forEach((v, i) => {
      const tps = readings[i]!.map((r) => r.tokensPerSecond as number);
      const decode = readings[i]!.map((r) => r.decodeTokensPerSecond as number);
      inferRows.push(
        failures[i]
          ? [label, v.what, failures[i]!, '', '', '', '']
          : [
              label,
              v.what,
              f(median(tps)),
              tps.map((x) => f(x)).join(' '),
              `${f(median(decode))} (${decode.map((x) => f(x)).join(' ')})`,
              f(median(readings[i]!.map((r) => r.loadSeconds as number))),
              f(Math.max(...readings[i]!.map((r) => r.rssGB as number)), 2),
            ],
      );
      rmSync(v.model, { recursive: true, force: true });
    });
  }
} finally {
  if (!flags.dir) rmSync(work, { recursive: true, force: true });
}

printTable(
  `Quantize (${flags.method}) w4 g128 on ${nsamples} x ${seqlen} tokens: seconds of the last block (with 2 or more layers, one past the first's one-off costs), measured / flop floor at ${(rate / 1e9).toFixed(0)} GFLOP/s, the best sgemm rate of the run (forward: 2·params·tokens + causal attention; Hessian: one triangle of XᵀX per group; sweep: rows·cols² + cols³ per group)`,
  ['model', 'forward s', 'Hessian s', 'sweep s', 'total s', 'peak RSS GB'],
  quantRows.map((row) => row()),
);
printTable(
  `Extrapolated to the whole model at ${FULL_TOKENS.nsamples} x ${FULL_TOKENS.seqlen} tokens (per-layer seconds: the last block's, forward scaled by its flop count, Hessian by tokens; total: the first block once, the last for every other layer)`,
  ['model', 'layers', 'forward s', 'Hessian s', 'sweep s', 'total h', 'floor h', 'x floor'],
  fullRows.map((row) => row()),
);
printTable(
  `Eval and generation (tokens/s; generate: ${flags['gen-tokens']} tokens greedy after ${flags['gen-prompt'] ? `a ${flags['gen-prompt']}-token prompt` : `"${PROMPT}"`}, the prompt's prefill included, the median of ${flags['gen-rounds']} rounds in which the variants take turns; decode: the tokens after the first, without the prefill), the model's load seconds (median) and peak RSS of the process`,
  ['model', 'run', 'tokens/s', 'each round', 'decode tokens/s (each round)', 'load s', 'peak RSS GB'],
  inferRows,
);
