import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { calibrationWindows } from './calib/windows.js';
import { loadText } from './calib/datasets.js';
import { writeFakeQuant } from './formats/fake-quant.js';
import { checkHalfRange, loaderCompatibility, writeGptqCheckpoint } from './formats/gptq.js';
import { writeGptqtCheckpoint } from './formats/gptqt.js';
import { checkGgufTokenizer, ggufIncompatibility, writeGguf } from './formats/gguf.js';
import { FTYPE_IDS } from './formats/gguf-mix.js';
import type { CheckpointFormat } from './formats/gptq-pack.js';
import { fail } from './io/errors.js';
import { loadTokenizer } from './models/load.js';
import type { LlamaTokenizer } from './io/tokenizer.js';
import { blockLinearWeights, ggufLayout, ggufUnsupported, readModelConfig, type ModelConfig } from './models/index.js';
import { checkOutputPath, onExit, writeAtomically, type OutputPolicy } from './io/atomic.js';
import {
  QUANTIZE_REFERENCE,
  quantizeModel,
  validateOptions,
  type QuantizeOptions,
  type QuantizeProgress,
  type QuantizeResult,
} from './quant/quantize-model.js';
import { highBitsOf } from './quant/gptqt.js';
import { getBackend } from './tensor/index.js';

/** The whole job behind `gptq quantize`: calibration data → quantized model → checkpoint on disk. */
export interface PipelineOptions extends QuantizeOptions {
  nsamples: number;
  seqlen: number;
  data: string;
  seed: number;
  /** checkpoint written to `out`: packed GPTQ (v1 or v2) or dequantized float weights */
  format: CheckpointFormat | 'fake' | 'gguf' | 'gptqt';
  /** dtype of the tensors that stay float in a GPTQ checkpoint */
  floatDtype: 'F16' | 'F32';
  maxShardBytes: number;
}

export const OUTPUT_FORMATS = ['gptq', 'gptq_v2', 'fake', 'gguf', 'gptqt'] as const;

/**
 * What `gptq quantize` and `quantize()` do unless told otherwise: the Python ecosystem's defaults (AutoGPTQ,
 * GPTQModel, transformers' GPTQConfig: 4 bits, groups of 128, symmetric, no act-order), written as a v1 GPTQ
 * checkpoint that every maintained loader reads, calibrated on the protocol's 128 windows of 256 tokens.
 * The paper's reference setting (per-channel, asymmetric) is QUANTIZE_REFERENCE.
 */
export const PIPELINE_DEFAULTS: PipelineOptions = {
  ...QUANTIZE_REFERENCE,
  bits: 4,
  groupSize: 128,
  sym: true,
  actOrder: false,
  nsamples: 128,
  seqlen: 256,
  data: 'sotu-calib',
  seed: 0,
  format: 'gptq',
  floatDtype: 'F16',
  maxShardBytes: 4096 * 2 ** 20,
};

/**
 * PIPELINE_DEFAULTS, with what follows from the options chosen: GPTQT has no groups and its own format; an
 * asymmetric grid is written as v2, since v1's zero−1 convention cannot hold its zero points for every loader.
 */
export function defaultsFor(options: Partial<PipelineOptions>): PipelineOptions {
  if (options.method === 'gptqt') return { ...PIPELINE_DEFAULTS, groupSize: -1, format: 'gptqt' };
  if (options.blockType !== undefined || options.ggufMix) return { ...PIPELINE_DEFAULTS, format: 'gguf' };
  return { ...PIPELINE_DEFAULTS, format: options.sym === false ? 'gptq_v2' : PIPELINE_DEFAULTS.format };
}

/** How one run behaves, beside what it computes. */
export interface QuantizeRun {
  onProgress?: QuantizeProgress;
  warn?: (msg: string) => void;
  log?: (msg: string) => void;
  /** replace an existing `out` once the new output is complete (never the input, nor a folder holding it) */
  force?: boolean;
  /**
   * keep each finished block beside `out` (`.OUT.partial`) and continue from there when an earlier run with the
   * same model, settings and calibration was stopped; removed once `out` is written
   */
  resume?: boolean;
  /** called once block l is finished and on disk (tests stop a run here) */
  onBlock?: (l: number) => void;
}

export interface PipelineSummary {
  model: string;
  out?: string;
  settings: PipelineOptions;
  calibration?: { windows: number; seqlen: number; tokens: number; data: string; seed: number };
  layers: QuantizeResult['reports'];
  timings: QuantizeResult['timings'];
}

/**
 * Quantize the model in `modelDir` with `options` (each defaults to PIPELINE_DEFAULTS) and, given `out`, write the
 * checkpoint there. An existing non-empty `out` is refused before any work unless `run.force` is set.
 */
export async function quantize(
  modelDir: string,
  options: Partial<PipelineOptions> = {},
  out?: string,
  hooks: QuantizeRun = {},
): Promise<{ result: QuantizeResult; summary: PipelineSummary }> {
  const opts: PipelineOptions = { ...defaultsFor(options), ...options };
  if (!existsSync(modelDir)) fail(`${modelDir}: model directory not found`);
  const outputPolicy: OutputPolicy = { onExisting: hooks.force ? 'replace' : 'refuse', inputs: [modelDir] };
  if (out) checkOutputPath(out, outputPolicy);
  const cfg = readModelConfig(modelDir);
  validateOptions(cfg, opts, opts.method !== 'rtn' ? { nsamples: opts.nsamples, seqlen: opts.seqlen } : undefined);
  if (!OUTPUT_FORMATS.includes(opts.format)) fail(`--format ${JSON.stringify(opts.format)} is not one of ${OUTPUT_FORMATS.join(', ')}`);
  if ((opts.method === 'gptqt') !== (opts.format === 'gptqt')) {
    fail(
      opts.method === 'gptqt'
        ? '--method gptqt writes its own binary-coded format: use --format gptqt'
        : '--format gptqt holds --method gptqt results only',
    );
  }
  if ((opts.blockType !== undefined || opts.ggufMix) && opts.format !== 'gguf' && opts.format !== 'fake')
    fail(`--gguf-type ${opts.ggufMix?.mix ?? opts.blockType} is written as --format gguf (or fake), not ${opts.format}`);
  if (opts.format === 'gguf') {
    if (opts.lmHeadBits !== undefined)
      fail("--format gguf: --lm-head-bits is a GPTQ checkpoint's per-module rule; a GGUF's head type is --output-tensor-type");
    const why = (opts.blockType === undefined && !opts.ggufMix ? ggufIncompatibility(opts) : undefined) ?? ggufUnsupported(cfg);
    if (why) fail(`--format gguf: ${why}`);
    for (const note of ggufLayout(cfg).notes) hooks.warn?.(note);
  } else if (opts.format !== 'fake') {
    const headBits = opts.lmHeadBits ?? opts.bits;
    const packs: [number, number][] = [
      [cfg.hiddenSize, opts.bits],
      [cfg.intermediateSize, opts.bits],
      ...(opts.lmHead ? [[cfg.embedDim, headBits] as [number, number]] : []),
    ];
    for (const [cols, bits] of packs) {
      if ((cols * bits) % 32 !== 0)
        fail(`--format ${opts.format}: ${cols} input columns of ${bits} bits do not pack into whole int32 words`);
    }
    // qzeros packs a group's zero points across the head's output rows
    if (opts.lmHead && (cfg.vocabSize * headBits) % 32 !== 0)
      fail(
        `--format ${opts.format} --lm-head: the head's ${cfg.vocabSize} rows of ${headBits}-bit zero points do not pack into whole int32 words`,
      );
  }
  if (opts.format === 'gptq' || opts.format === 'gptq_v2') {
    // the head's own bits (written as a `dynamic` rule) face the loaders as well
    const { refuse, warnings } = loaderCompatibility(opts.format, opts);
    const head = opts.lmHeadBits !== undefined ? loaderCompatibility(opts.format, { ...opts, bits: opts.lmHeadBits }).warnings : [];
    if (refuse) fail(`--format ${opts.format}: ${refuse}`);
    for (const w of [...warnings, ...head.filter((w) => !warnings.includes(w)).map((w) => `--lm-head-bits: ${w}`)]) hooks.warn?.(w);
    if (out && opts.floatDtype === 'F16') checkHalfRange(modelDir, quantizedTensors(cfg, Boolean(opts.lmHead)));
  }
  let calib: { windows: Int32Array; seqlen: number } | undefined;
  let calibration: PipelineSummary['calibration'];
  const tokenizer = opts.method !== 'rtn' || opts.format === 'gguf' ? loadTokenizer(modelDir) : undefined;
  // a tokenizer llama.cpp would run differently is refused before any work
  if (opts.format === 'gguf') for (const note of checkGgufTokenizer(tokenizer!)) hooks.warn?.(note);
  if (opts.method !== 'rtn') {
    const text = await loadText(opts.data);
    hooks.log?.(`tokenizing calibration text ${opts.data}`);
    const tokens = tokenizer!.encode(text);
    if (tokens.length <= opts.seqlen)
      fail(`${opts.data}: ${tokens.length} tokens of calibration text, need more than --seqlen ${opts.seqlen}`);
    calib = { windows: calibrationWindows(tokens, opts.nsamples, opts.seqlen, opts.seed), seqlen: opts.seqlen };
    calibration = { windows: opts.nsamples, seqlen: opts.seqlen, tokens: tokens.length, data: opts.data, seed: opts.seed };
  }
  const state = stateDir(out, hooks);
  try {
    const run = {
      ...(state ? { dir: state.dir } : {}),
      resume: Boolean(hooks.resume),
      ...(hooks.onBlock ? { onBlock: hooks.onBlock } : {}),
    };
    const result = await quantizeModel(modelDir, await getBackend(), opts, calib, hooks.onProgress, hooks.warn, undefined, run);
    const summary: PipelineSummary = { model: modelDir, settings: opts, layers: result.reports, timings: result.timings };
    if (calibration) summary.calibration = calibration;
    if (out) await writeOutput(modelDir, cfg, opts, result, summary, out, outputPolicy, tokenizer, hooks);
    // the output is complete: a resumable run's blocks are no longer needed
    if (state) rmSync(state.dir, { recursive: true, force: true });
    return { result, summary };
  } finally {
    if (state && !hooks.resume) rmSync(state.dir, { recursive: true, force: true });
    state?.unregister();
  }
}

/** The tensors a run quantizes: every block's linear weights, and the head with --lm-head. */
function quantizedTensors(cfg: ModelConfig, lmHead: boolean): Set<string> {
  const blocks = Array.from({ length: cfg.numLayers }, (_, l) => blockLinearWeights(cfg, l));
  return new Set([...blocks.flat(), ...(lmHead ? [cfg.tensors.head] : [])]);
}

/**
 * Where the run keeps its calibration hidden states and finished blocks: beside the output, on the disk the user
 * chose for it. A resumable run's directory (`.OUT.partial`) outlives the process, and no later run's stale-temp
 * tidying touches it; any other run's is a temporary named like the atomic writer's (`.OUT.tmp-PID-TIME`),
 * removed at exit, or by a later run once this process is gone.
 */
function stateDir(out: string | undefined, hooks: QuantizeRun): { dir: string; unregister: () => void } | undefined {
  if (!out) {
    if (hooks.resume) fail('--resume needs --out: the run keeps its finished blocks beside the output');
    return undefined;
  }
  const parent = dirname(resolve(out));
  const partial = join(parent, `.${basename(out)}.partial`);
  if (hooks.resume) return { dir: partial, unregister: () => {} };
  if (existsSync(partial)) hooks.warn?.(`${partial} holds an interrupted run's finished blocks: kept (pass --resume to continue it)`);
  // a millisecond before now: the atomic writer's own temporary, named later in this process, cannot collide with it
  const dir = join(parent, `.${basename(out)}.tmp-${process.pid}-${Date.now() - 1}`);
  mkdirSync(dir, { recursive: true });
  return { dir, unregister: onExit(() => rmSync(dir, { recursive: true, force: true })) };
}

async function writeOutput(
  modelDir: string,
  cfg: ModelConfig,
  opts: PipelineOptions,
  result: QuantizeResult,
  summary: PipelineSummary,
  out: string,
  outputPolicy: OutputPolicy,
  tokenizer: LlamaTokenizer | undefined,
  hooks: QuantizeRun,
): Promise<void> {
  summary.out = out;
  await writeAtomically(
    out,
    async (tmp) => {
      if (opts.format === 'fake') {
        await writeFakeQuant(modelDir, tmp, result.layers, summary);
      } else if (opts.format === 'gptqt') {
        await writeGptqtCheckpoint(modelDir, tmp, result.binaryLayers, {
          bits: opts.bits,
          highBits: highBitsOf(opts),
          summary,
        });
      } else if (opts.format === 'gguf') {
        await writeGguf(modelDir, cfg, tokenizer!, result.layers, tmp, opts.ggufMix ? { fileType: FTYPE_IDS[opts.ggufMix.mix] } : {});
      } else {
        await writeGptqCheckpoint(modelDir, tmp, result.layers, {
          format: opts.format,
          floatDtype: opts.floatDtype,
          maxShardBytes: opts.maxShardBytes,
          quant: opts,
          summary,
          ...(hooks.warn ? { warn: hooks.warn } : {}),
        });
      }
    },
    outputPolicy,
  );
}
