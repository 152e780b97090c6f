import { GGML_TYPES, typeForRows, type BlockType } from '../formats/ggml-blocks.js';
import { planGgufTypes, type GgufMixOptions, type PlannedTensor } from '../formats/gguf-mix.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fail } from '../io/errors.js';
import { SafetensorsModel } from '../io/safetensors.js';
import {
  blockLinearWeights,
  checkTensorNames,
  Decoder,
  floatEmbedding,
  layerPrefix,
  linearGroups,
  linearShape,
  readBlock,
  readOuter,
  readModelConfig,
  type ModelConfig,
} from '../models/index.js';
import type { Backend } from '../tensor/index.js';
import { gptq, GPTQ_REFERENCE, type GptqOptions, type PreparedHessian } from './gptq.js';
import { calibrateBlock, type Stream } from './block-stages.js';
import { quantizeHead } from './head-stage.js';
import { HessianAccumulator } from './hessian.js';
import { dequantize, type QuantizedLayer } from './quantized-layer.js';
import { SUPPORTED_BITS } from './quantizer.js';
import { rtn, rtnBlocks } from './rtn.js';
import { dequantizeBinary, gptqt, highBitsOf, type BinaryCodedLayer } from './gptqt.js';
import { digest, LayerStore, modelFingerprint, RowFile, RunState, type StageSeconds } from './run-state.js';

export type { StageSeconds };

export type Method = 'gptq' | 'gptqv2' | 'gptqt' | 'rtn';
export const METHODS: Method[] = ['gptq', 'gptqv2', 'gptqt', 'rtn'];

export interface QuantizeOptions extends GptqOptions {
  method: Method;
  /** GPTQv2's weight of the asymmetric correction */
  alpha: number;
  /** GPTQT's first, linear bit width (default bits + 2) */
  highBits?: number;
  /**
   * llama-quantize's per-tensor type mix (--gguf-type Q4_K_M): each linear layer swept on its own block type, and
   * token_embd / output, where the mix quantizes them, rounded to nearest on theirs (see mixPlan)
   */
  ggufMix?: GgufMixOptions;
  /** quantize the (untied) LM head too, with the same grid, after the last block (GPTQModel's `lm_head: true`) */
  lmHead?: boolean;
  /** the head's bits where they differ from the blocks' (an 8-bit head beside 4-bit blocks; GPTQModel's `dynamic`) */
  lmHeadBits?: number;
}

/**
 * The mix's type for every tensor it quantizes, by checkpoint name: decided once (planGgufTypes), here, for the
 * sweep, the embedding/head rounding and the refusals. Types we have no grid for are refused by name.
 */
export function mixPlan(cfg: ModelConfig, mix: GgufMixOptions): Map<string, PlannedTensor & { type: BlockType | 'F32' }> {
  const plan = new Map<string, PlannedTensor & { type: BlockType | 'F32' }>();
  for (const t of planGgufTypes(cfg, mix)) {
    if (t.type === 'F16')
      fail(
        t.linear
          ? `--gguf-type ${mix.mix}: ${t.name}'s rows of ${t.cols} are not whole blocks of 32: llama-quantize keeps it F16, which gptq-ts does not hold for a linear layer`
          : `--gguf-type ${mix.mix}: ${t.name} as F16 is not implemented (F32 keeps it float)`,
      );
    if (t.linear && t.type === 'F32') fail(`--gguf-type ${mix.mix}: ${t.name} as F32: gptq-ts quantizes every linear layer`);
    plan.set(t.source, t as PlannedTensor & { type: BlockType | 'F32' });
  }
  return plan;
}

export interface LayerReport {
  name: string;
  rows: number;
  cols: number;
  /** GPTQ's loss Σ(w−q)²/U_ii²/2 (absent for RTN, which has no Hessian) */
  loss?: number;
  percdamp?: number;
  seconds: number;
}

export interface QuantizeResult {
  config: ModelConfig;
  /** full tensor name (…q_proj.weight) → quantized layer */
  layers: ReadonlyMap<string, QuantizedLayer>;
  /** GPTQT's binary-coded layers, by the same names */
  binaryLayers: ReadonlyMap<string, BinaryCodedLayer>;
  reports: LayerReport[];
  timings: QuantizeTimings;
}

export interface QuantizeTimings extends StageSeconds {
  /**
   * each block's own, in order (those a resumed run adopted included): the first block also pays one-off costs
   * (first use of every kernel and buffer), so a later block is what each further layer of the model costs
   */
  blocks: StageSeconds[];
  /** the LM head's stage (--lm-head), after the blocks */
  head?: StageSeconds;
}

export interface QuantizeProgress {
  /** `eta`: seconds left for the whole model, from this run's finished blocks (none before the first) */
  (done: number, total: number, layer: string, eta?: number): void;
}

/** Sees each layer's original weight, its Hessian (GPTQ only) and result: for analysis and tests. */
export type LayerInspector = (name: string, weight: Float32Array, hessian: Float64Array | undefined, result: QuantizedLayer) => void;

/** Refuse impossible settings before any work: one clear message. */
export function validateOptions(cfg: ModelConfig, opts: QuantizeOptions, calib?: { nsamples: number; seqlen: number }): void {
  if (opts.blockType !== undefined && opts.ggufMix) fail('a block type and a --gguf-type mix contradict each other: choose one');
  if (opts.ggufMix) mixPlan(cfg, opts.ggufMix);
  if (opts.blockType !== undefined || opts.ggufMix) {
    // a llama.cpp block type is the whole grid: its bits, blocks and sub-block scales replace --bits/--group-size
    if (opts.blockType !== undefined && !Object.hasOwn(GGML_TYPES, opts.blockType))
      fail(`--gguf-type ${JSON.stringify(opts.blockType)} is not one of ${Object.keys(GGML_TYPES).join(', ')}`);
    if (opts.actOrder || opts.staticGroups || opts.order === 'reverse')
      fail('--gguf-type: llama.cpp blocks are runs of contiguous columns: no --act-order, --static-groups or --order reverse');
    if (opts.method === 'gptqt') fail('--gguf-type: --method gptqt has its own binary coding, not a llama.cpp block type');
    if (opts.blockType !== undefined) for (const name of linearGroups(cfg).flat()) typeForRows(opts.blockType, linearShape(cfg, name)[1]);
  } else if (!SUPPORTED_BITS.includes(opts.bits)) fail(`--bits ${opts.bits} is not supported (choose from ${SUPPORTED_BITS.join(', ')})`);
  if (opts.groupSize !== -1 && opts.blockType === undefined && !opts.ggufMix) {
    if (!Number.isInteger(opts.groupSize) || opts.groupSize <= 0) fail(`--group-size ${opts.groupSize} must be a positive integer or -1`);
    for (const group of linearGroups(cfg)) {
      for (const name of group) {
        const cols = linearShape(cfg, name)[1];
        // as in the reference, a last group may be partial (g128 on 288 columns: 128 + 128 + 32)
        if (opts.groupSize > cols) fail(`--group-size ${opts.groupSize} is larger than ${name}'s ${cols} input columns`);
      }
    }
  }
  if (opts.lmHead) {
    // GPTQModel refuses a tied head as well: its one table is also the embedding the first block reads
    if (cfg.tieWordEmbeddings) fail('--lm-head: tie_word_embeddings is true: the head is the embedding table, which stays float');
    if (opts.method === 'gptqt') fail('--lm-head: --method gptqt codes the decoder blocks only');
    if (opts.blockType !== undefined || opts.ggufMix) fail("--lm-head: a GGUF's output tensor takes its type from the --gguf-type mix");
    if (opts.groupSize > cfg.embedDim) fail(`--group-size ${opts.groupSize} is larger than the head's ${cfg.embedDim} input columns`);
  }
  if (opts.lmHeadBits !== undefined) {
    if (!opts.lmHead) fail('--lm-head-bits needs --lm-head');
    if (!SUPPORTED_BITS.includes(opts.lmHeadBits)) fail(`--lm-head-bits ${opts.lmHeadBits} is not one of ${SUPPORTED_BITS.join(', ')}`);
  }
  if (opts.staticGroups && opts.groupSize === -1) fail('--static-groups needs a --group-size');
  if (!(opts.percdamp >= 0 && opts.percdamp < 1)) fail(`--damp ${opts.percdamp} must be in [0, 1)`);
  if (!Number.isInteger(opts.blocksize) || opts.blocksize <= 0) fail(`blocksize ${opts.blocksize} must be a positive integer`);
  if (opts.order !== 'forward' && opts.order !== 'reverse') fail(`--order ${JSON.stringify(opts.order)} is not forward or reverse`);
  if (opts.order === 'reverse' && opts.actOrder) fail('--order reverse and --act-order are two different column orders: choose one');
  if (!METHODS.includes(opts.method)) fail(`--method ${JSON.stringify(opts.method)} is not one of ${METHODS.join(', ')}`);
  if (opts.method === 'gptqv2') {
    if (!(opts.alpha > 0 && Number.isFinite(opts.alpha))) fail(`--alpha ${opts.alpha} must be a positive number`);
    if (opts.order === 'reverse') fail('--method gptqv2 supports the forward and act-order column orders, not --order reverse');
  }
  if (opts.method === 'gptqt') {
    if (opts.bits !== 2 && opts.bits !== 3) fail(`--method gptqt codes 2 or 3 bits, not ${opts.bits}`);
    if (opts.groupSize !== -1 || opts.staticGroups)
      fail('--method gptqt fits one binary coding per output row: no --group-size or --static-groups');
    const high = highBitsOf(opts);
    if (!Number.isInteger(high) || high <= opts.bits || high > 8) fail(`--high-bits ${high} must be an integer in ${opts.bits + 1}..8`);
  }
  if (opts.method === 'rtn' && (opts.actOrder || opts.staticGroups || opts.order === 'reverse'))
    fail('--act-order, --static-groups and --order are GPTQ options; RTN has no column order');
  if (calib) {
    if (!Number.isInteger(calib.nsamples) || calib.nsamples < 1 || calib.nsamples > 1_000_000)
      fail(`--nsamples ${calib.nsamples} must be a positive integer`);
    if (!Number.isInteger(calib.seqlen) || calib.seqlen < 2 || calib.seqlen > cfg.maxPositions) {
      fail(`--seqlen ${calib.seqlen} must be in 2..${cfg.maxPositions} (the model's context)`);
    }
  }
}

/** Where a run keeps its hidden states and finished blocks, and whether it continues an earlier run's. */
export interface RunStateOptions {
  /**
   * the state directory: finished blocks' layers are written there and read back when asked for. Without one, a
   * temporary directory holds the hidden states (removed at the end) and the layers stay in memory.
   */
  dir?: string;
  /** continue the run whose state `dir` holds: same model, settings and calibration windows, or refused */
  resume?: boolean;
  /** what else the result depends on (the pipeline's output settings), checked on resume */
  identity?: Record<string, unknown>;
  /** called once block l is finished and recorded (tests stop a run here) */
  onBlock?: (l: number) => void;
}

/**
 * Quantize every linear layer of a model, block by block, streaming the weights from disk. GPTQ runs
 * each block once over the calibration windows; at each true-sequential group ([q,k,v] → [o] → [gate,up] →
 * [down]) the forward pauses, the group's Hessian is built from its inputs, its layers are quantized and
 * replaced by their quantized weights, and the forward continues. So every group is calibrated on the
 * outputs of everything quantized before it, and no activation is computed twice. The calibration hidden
 * states go through files in the state directory (see RunState), a chunk at a time.
 */
export async function quantizeModel(
  dir: string,
  backend: Backend,
  opts: QuantizeOptions,
  calib: { windows: Int32Array; seqlen: number } | undefined,
  onProgress: QuantizeProgress = () => {},
  warn: (msg: string) => void = () => {},
  inspect?: LayerInspector,
  run: RunStateOptions = {},
): Promise<QuantizeResult> {
  const t0 = performance.now();
  const cfg = readModelConfig(dir);
  validateOptions(cfg, opts, calib && { nsamples: calib.windows.length / calib.seqlen, seqlen: calib.seqlen });
  if (opts.method !== 'rtn' && !calib) throw new Error(`${opts.method} needs calibration windows`);
  const asymmetric = opts.method === 'gptqv2';
  const matmulNT = backend.matmulNT.bind(backend);
  const matmulNN = backend.matmulNN.bind(backend);
  const matmul64 = backend.matmul64.bind(backend);
  const st = new SafetensorsModel(dir);
  const layers = new LayerStore<QuantizedLayer>();
  const binaryLayers = new LayerStore<BinaryCodedLayer>();
  const store = opts.method === 'gptqt' ? binaryLayers : layers;
  const reports: LayerReport[] = [];
  const timings: QuantizeTimings = { forward: 0, hessian: 0, sweep: 0, total: 0, blocks: [] };
  const groups = linearGroups(cfg);
  const total = cfg.numLayers * groups.flat().length + (opts.lmHead ? 1 : 0);
  // a mix gives each layer its own block type (the resume identity holds the mix through `options`)
  const plan = opts.ggufMix && mixPlan(cfg, opts.ggufMix);
  const optsFor = (full: string): QuantizeOptions => (plan ? { ...opts, blockType: plan.get(full)!.type as BlockType } : opts);
  const stateDir = run.dir ?? mkdtempSync(join(tmpdir(), 'gptq-ts-run-'));
  let state: RunState<LayerReport> | undefined;
  try {
    // a float checkpoint exactly as config.json describes it, checked before hours of work
    checkTensorNames(st, cfg, (w) => ({ required: [w] }));
    const identity = {
      model: modelFingerprint(dir, st),
      options: opts,
      calibration: calib ? { seqlen: calib.seqlen, windows: calib.windows.length / calib.seqlen, sha256: digest(calib.windows) } : null,
      ...run.identity,
    };
    state = new RunState<LayerReport>(stateDir, identity, run.resume ?? false);
    const finished = state.finished.length;
    for (const [l, b] of state.finished.entries()) {
      reports.push(...b.reports);
      store.adopt(state.layersPath(l), blockLinearWeights(cfg, l));
    }
    if (finished > 0) onProgress(reports.length, total, reports.at(-1)!.name);
    // the stages read nothing outside the blocks: no embedding or head held while they run
    const model = new Decoder(cfg, backend, { embed: floatEmbedding(new Float32Array(0)), head: floatEmbedding(new Float32Array(0)) }, []);
    const nseq = calib ? calib.windows.length / calib.seqlen : 0;
    const widest = Math.max(...groups.flat().flatMap((n) => linearShape(cfg, n)));
    const chunkTokens = Math.min(CALIBRATION_CHUNK_TOKENS, Math.floor(CHUNK_ACTIVATION_FLOATS / widest));
    const chunk = calib ? Math.max(1, Math.floor(chunkTokens / calib.seqlen)) : 0;
    // GPTQv2 follows the full-precision model's hidden states alongside the quantized path's
    const nstreams = asymmetric ? 2 : 1;
    const D = cfg.hiddenSize;
    if (calib && finished === 0) await embedCalibration(st, cfg, backend, calib, chunk, state, nstreams);
    const runStart = performance.now();
    for (let l = finished; l < cfg.numLayers; l++) {
      const blockStart = performance.now();
      const seconds: StageSeconds = { forward: 0, hessian: 0, sweep: 0, total: 0 };
      const eta = (): number | undefined => {
        const done = l - finished;
        if (done === 0) return undefined;
        const perBlock = (blockStart - runStart) / 1000 / done;
        return Math.max(0, perBlock * (cfg.numLayers - l) - (performance.now() - blockStart) / 1000);
      };
      const block = readBlock(st, cfg, l);
      const hessians: (HessianAccumulator | undefined)[] = [];
      const quantizeGroup = async (g: number): Promise<void> => {
        const hessian = hessians[g];
        // the group's layers share one Hessian: factor it once for all of them
        let prepared: PreparedHessian | undefined;
        if (hessian) {
          const th = performance.now();
          await hessian.flush();
          seconds.hessian += (performance.now() - th) / 1000;
          const tp = performance.now();
          const label = `${layerPrefix(cfg, l)}[${groups[g]!.join(', ')}]`;
          prepared = await hessian.prepare(opts, (m) => warn(`${label}: ${m}`), matmul64);
          seconds.sweep += (performance.now() - tp) / 1000;
        }
        for (const name of groups[g]!) {
          const ts = performance.now();
          const [rows_, cols] = linearShape(cfg, name);
          const full = `${layerPrefix(cfg, l)}${name}.weight`;
          const w = block.linear[name]!;
          const report: LayerReport = { name: full, rows: rows_, cols, seconds: 0 };
          if (opts.method === 'gptqt') {
            const r = await gptqt(
              w,
              hessian!.h,
              rows_,
              cols,
              { ...opts, highBits: highBitsOf(opts) },
              { prepared: prepared!, matmulNT, matmulNN },
            );
            report.loss = r.loss;
            report.percdamp = r.percdamp;
            block.linear[name] = dequantizeBinary(r.layer);
            binaryLayers.set(full, r.layer);
          } else {
            let q: QuantizedLayer;
            if (hessian) {
              const r = await gptq(w, hessian.h, rows_, cols, optsFor(full), { prepared: prepared!, matmulNT, matmulNN });
              q = r.layer;
              report.loss = r.loss;
              report.percdamp = r.percdamp;
            } else {
              q = rtn(w, rows_, cols, optsFor(full));
            }
            inspect?.(full, w, hessian?.h, q);
            block.linear[name] = dequantize(q);
            layers.set(full, q);
          }
          report.seconds = (performance.now() - ts) / 1000;
          seconds.sweep += report.seconds;
          reports.push(report);
          onProgress(reports.length, total, full, eta());
        }
        // the largest of a block's buffers (down_proj's inputs are the MLP's width): gone once its layers are done
        hessians[g] = undefined;
      };
      if (calib) {
        const tb = performance.now();
        const streams: Stream[] = [];
        for (let s = 0; s < nstreams; s++) {
          streams.push({
            // GPTQv2's second stream keeps the original weights: quantization replaces whole arrays in block.linear
            weights: s === 0 ? block : { ...block, linear: { ...block.linear } },
            input: new RowFile(state.hiddenPath(l, s), D, 'open'),
            output: state.newHidden(l + 1, s, D),
            attention: state.scratch('attention', s, linearShape(cfg, cfg.linear.o)[1]),
            activation: state.scratch('activation', s, linearShape(cfg, cfg.linear.down)[1]),
          });
        }
        try {
          await calibrateBlock(model, l, streams, nseq, calib.seqlen, chunk, {
            observe: async (g, [input, fpInput], rows, count) => {
              const th = performance.now();
              hessians[g] ??= new HessianAccumulator(input!.length / rows, backend, asymmetric);
              await hessians[g].add(input!, rows, count, fpInput);
              seconds.hessian += (performance.now() - th) / 1000;
            },
            quantize: quantizeGroup,
          });
          // only a kept run (--resume) is read again after a crash: 1.7 s a block at Llama-2-7B's 4.3 GB of rows
          if (run.dir) for (const s of streams) await s.output.sync();
        } finally {
          await closeAll(streams.flatMap((s) => [s.input, s.output, s.attention, s.activation]));
        }
        seconds.forward = (performance.now() - tb) / 1000 - (seconds.hessian + seconds.sweep);
      } else {
        for (let g = 0; g < groups.length; g++) await quantizeGroup(g);
      }
      if (run.dir) await store.spill(state.layersPath(l), blockLinearWeights(cfg, l));
      seconds.total = (performance.now() - blockStart) / 1000;
      state.finish(l, { reports: reports.slice(-blockLinearWeights(cfg, l).length), seconds });
      run.onBlock?.(l);
    }
    if (opts.lmHead) {
      const files = calib ? Array.from({ length: nstreams }, (_, s) => new RowFile(state!.hiddenPath(cfg.numLayers, s), D, 'open')) : [];
      try {
        const rows = calib && { files, windows: nseq, seqlen: calib.seqlen, chunk };
        const head = await quantizeHead(st, cfg, backend, { ...opts, bits: opts.lmHeadBits ?? opts.bits }, rows, warn, inspect);
        layers.set(head.report.name, head.layer);
        reports.push(head.report);
        timings.head = head.seconds;
        onProgress(reports.length, total, head.report.name, 0);
      } finally {
        await closeAll(files);
      }
    }
    state.dropRows(cfg.numLayers, nstreams);
    if (plan) roundOuterTensors(st, plan, layers);
    timings.total = state.finished.slice(0, finished).reduce((a, b) => a + b.seconds.total, 0) + (performance.now() - t0) / 1000;
    // each stage's seconds are its blocks' (a resumed run's adopted blocks included) and the head's
    timings.blocks = state.finished.map((b) => b.seconds);
    for (const k of ['forward', 'hessian', 'sweep'] as const)
      timings[k] = timings.blocks.reduce((a, b) => a + b[k], 0) + (timings.head?.[k] ?? 0);
  } finally {
    st.close();
    state?.release();
    if (!run.dir) rmSync(stateDir, { recursive: true, force: true });
  }
  return { config: cfg, layers, binaryLayers, reports, timings };
}

/**
 * token_embd and output where the mix quantizes them: not GPTQ layers (no Hessian: llama-quantize rounds them too,
 * without an imatrix), so rounded to nearest on their block grid, stored beside the linear layers under their
 * checkpoint names so that every writer (GGUF, fake) holds the same weights. A tied head is the embedding itself.
 */
function roundOuterTensors(
  st: SafetensorsModel,
  plan: Map<string, PlannedTensor & { type: BlockType | 'F32' }>,
  layers: LayerStore<QuantizedLayer>,
): void {
  for (const [source, t] of plan) {
    if (t.linear || t.type === 'F32') continue;
    const rows = st.info(source).shape[0]!;
    layers.set(source, rtnBlocks(st.readFloat(source, [rows, t.cols]), rows, t.cols, t.type));
  }
}

/** Closes every file, each after its writes, and then throws the first failure among them. */
async function closeAll(files: RowFile[]): Promise<void> {
  const results = await Promise.allSettled(files.map((f) => f.close()));
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** The calibration windows' embeddings, a chunk at a time, as every stream's input to block 0. */
async function embedCalibration(
  st: SafetensorsModel,
  cfg: ModelConfig,
  backend: Backend,
  calib: { windows: Int32Array; seqlen: number },
  chunk: number,
  state: RunState<LayerReport>,
  nstreams: number,
): Promise<void> {
  const embedder = new Decoder(cfg, backend, readOuter(st, cfg, false), []);
  const files = Array.from({ length: nstreams }, (_, s) => new RowFile(state.hiddenPath(0, s), cfg.hiddenSize, 'create'));
  try {
    const step = chunk * calib.seqlen;
    for (let row = 0; row < calib.windows.length; row += step) {
      const x = await embedder.embedTokens(calib.windows.subarray(row, row + step), calib.seqlen);
      for (const f of files) await f.write(row, x);
    }
    // not fsynced: only block 0 reads these rows, and a run resumed before block 0 is recorded embeds them again
  } finally {
    await closeAll(files);
  }
}

/**
 * Calibration positions per forward chunk (16 windows of 256), the batch each Hessian update sees; fewer where a
 * layer is so wide that a chunk's activations would pass CHUNK_ACTIVATION_FLOATS per tensor (Llama-2-7B's and
 * Llama-3-8B's MLPs: one window of 2048). Memory then holds about the same chunk whatever the calibration set.
 */
const CALIBRATION_CHUNK_TOKENS = 4096;
const CHUNK_ACTIVATION_FLOATS = 2 ** 25;

/** GPTQ_REFERENCE with the method and GPTQv2's correction weight. */
export const QUANTIZE_REFERENCE: QuantizeOptions = { ...GPTQ_REFERENCE, method: 'gptq', alpha: 0.25 };
