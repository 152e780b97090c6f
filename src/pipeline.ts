import { existsSync } from 'node:fs';
import { calibrationWindows } from './calib/windows.js';
import { loadText } from './calib/datasets.js';
import { writeFakeQuant } from './formats/fake-quant.js';
import { writeGptqCheckpoint } from './formats/gptq.js';
import { writeGptqtCheckpoint } from './formats/gptqt.js';
import { ggufIncompatibility, writeGguf } from './formats/gguf.js';
import type { CheckpointFormat } from './formats/gptq-pack.js';
import { parseLlamaConfig, readConfigJson } from './io/config.js';
import { fail } from './io/errors.js';
import { loadTokenizer } from './models/load.js';
import {
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

export interface PipelineSummary {
  model: string;
  out?: string;
  settings: PipelineOptions;
  calibration?: { windows: number; seqlen: number; tokens: number; data: string; seed: number };
  layers: QuantizeResult['reports'];
  timings: QuantizeResult['timings'];
}

export async function quantize(
  modelDir: string,
  opts: PipelineOptions,
  out: string | undefined,
  hooks: { onProgress?: QuantizeProgress; warn?: (msg: string) => void; log?: (msg: string) => void } = {},
): Promise<{ result: QuantizeResult; summary: PipelineSummary }> {
  if (!existsSync(modelDir)) fail(`${modelDir}: model directory not found`);
  const cfg = parseLlamaConfig(readConfigJson(modelDir), `${modelDir}/config.json`);
  validateOptions(cfg, opts, opts.method !== 'rtn' ? { nsamples: opts.nsamples, seqlen: opts.seqlen } : undefined);
  if (!OUTPUT_FORMATS.includes(opts.format)) fail(`--format ${JSON.stringify(opts.format)} is not one of ${OUTPUT_FORMATS.join(', ')}`);
  if ((opts.method === 'gptqt') !== (opts.format === 'gptqt')) {
    fail(
      opts.method === 'gptqt'
        ? '--method gptqt writes its own binary-coded format: use --format gptqt'
        : '--format gptqt holds --method gptqt results only',
    );
  }
  if (opts.format === 'gguf') {
    const why = ggufIncompatibility(opts);
    if (why) fail(`--format gguf: ${why}`);
  } else if (opts.format !== 'fake') {
    for (const cols of [cfg.hiddenSize, cfg.intermediateSize]) {
      if ((cols * opts.bits) % 32 !== 0)
        fail(`--format ${opts.format}: ${cols} input columns of ${opts.bits} bits do not pack into whole int32 words`);
    }
  }
  let calib: { windows: Int32Array; seqlen: number } | undefined;
  let calibration: PipelineSummary['calibration'];
  const tokenizer = opts.method !== 'rtn' || opts.format === 'gguf' ? loadTokenizer(modelDir) : undefined;
  if (opts.method !== 'rtn') {
    const text = await loadText(opts.data);
    hooks.log?.(`tokenizing calibration text ${opts.data}`);
    const tokens = tokenizer!.encode(text);
    calib = { windows: calibrationWindows(tokens, opts.nsamples, opts.seqlen, opts.seed), seqlen: opts.seqlen };
    calibration = { windows: opts.nsamples, seqlen: opts.seqlen, tokens: tokens.length, data: opts.data, seed: opts.seed };
  }
  const result = await quantizeModel(modelDir, await getBackend(), opts, calib, hooks.onProgress, hooks.warn);
  const summary: PipelineSummary = { model: modelDir, settings: opts, layers: result.reports, timings: result.timings };
  if (calibration) summary.calibration = calibration;
  if (out) {
    summary.out = out;
    if (opts.format === 'fake') {
      await writeFakeQuant(modelDir, out, result.layers, summary);
    } else if (opts.format === 'gptqt') {
      await writeGptqtCheckpoint(modelDir, out, result.binaryLayers, {
        bits: opts.bits,
        highBits: highBitsOf(opts),
        summary,
      });
    } else if (opts.format === 'gguf') {
      await writeGguf(modelDir, cfg, tokenizer!, result.layers, out);
    } else {
      await writeGptqCheckpoint(modelDir, out, result.layers, {
        format: opts.format,
        floatDtype: opts.floatDtype,
        maxShardBytes: opts.maxShardBytes,
        quant: opts,
        summary,
        ...(hooks.warn ? { warn: hooks.warn } : {}),
      });
    }
  }
  return { result, summary };
}
