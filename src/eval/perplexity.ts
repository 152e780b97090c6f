import { softcap, type Decoder } from '../models/index.js';
import type { BlockStream } from '../models/load.js';
import { logitStats } from '../tensor/ref.js';
import {
  concatArrays,
  headLogits,
  SLICE_FLOATS,
  type Backend,
  type HeadStats,
  type LinearKernel,
  type StoredRows,
} from '../tensor/index.js';

/**
 * Perplexity by the reference protocol: the first `windows` non-overlapping windows of `seqlen` tokens;
 * in each, tokens 1..seqlen-1 are predicted from their prefix; ppl = exp(mean NLL). With a reference model's
 * states, also KL(ref || model) of the next-token distributions (mean with its standard error, and percentiles),
 * top-1 agreement and the RMS change of the probability of the actual next token, as llama-perplexity
 * --kl-divergence reports them, so numbers compare with what llama.cpp users read.
 */
export interface EvalOptions {
  windows?: number;
  seqlen?: number;
  /** windows per forward pass */
  batch?: number;
  /** the reference model's final hidden states for the same windows (see referenceStates) */
  ref?: ReferenceStates;
  /** names the text in errors (a dataset name or file path) */
  source?: string;
  onProgress?: (done: number, total: number) => void;
  /** the blocks of a model opened streamed (loadModel's `stream`): every window goes through one block before the next */
  stream?: BlockStream;
  /** blocks done, for a streamed model, which runs them all before its first window is scored */
  onBlock?: (done: number, total: number) => void;
}

export interface EvalResult {
  ppl: number;
  meanNll: number;
  windows: number;
  seqlen: number;
  tokens: number;
  kl?: number;
  top1?: number;
  /** against a reference: the standard error of the mean KL, KL percentiles, and RMS of p(next) − p_ref(next) */
  klUncertainty?: number;
  klPercentiles?: { p999: number; p99: number; p95: number; p90: number; median: number };
  deltaPRms?: number;
  seconds: number;
}

/** A reference model's final hidden states over the eval windows, computed once and reused for every comparison. */
export interface ReferenceStates {
  head: StoredRows;
  /** the reference's quantized head, in place of `head` */
  headKernel?: LinearKernel;
  /** the reference model's logit soft-cap (Gemma 2), if any */
  softcap?: number;
  /** [windows * seqlen, hidden] */
  hidden: Float32Array;
  /** −log p_ref(next token) at each predicted position, [windows * (seqlen − 1)] */
  nll: Float32Array;
  windows: number;
  seqlen: number;
}

function windowPlan(model: Decoder, tokens: ArrayLike<number>, opts: EvalOptions): { seqlen: number; windows: number; batch: number } {
  const seqlen = opts.seqlen ?? Math.min(256, model.cfg.maxPositions);
  if (seqlen < 2 || seqlen > model.cfg.maxPositions) throw new RangeError(`seqlen ${seqlen} must be in 2..${model.cfg.maxPositions}`);
  const windows = Math.min(opts.windows ?? 128, Math.floor(tokens.length / seqlen));
  if (windows < 1) {
    throw new RangeError(`${opts.source ?? 'text'}: ${tokens.length} tokens, too short for one window of ${seqlen}`);
  }
  return { seqlen, windows, batch: opts.batch ?? 8 };
}

function windowTokens(tokens: ArrayLike<number>, first: number, count: number, seqlen: number): Int32Array {
  return Int32Array.from({ length: count * seqlen }, (_, i) => tokens[first * seqlen + i]!);
}

/**
 * The head's input for windows [w0, w0 + b) (ids: their tokens): a batch at a time through the model, or for a
 * streamed one, from every window's run through the blocks, made before the first batch is asked for.
 */
async function finalStates(
  model: Decoder,
  tokens: ArrayLike<number>,
  { seqlen, windows, batch }: { seqlen: number; windows: number; batch: number },
  opts: EvalOptions,
): Promise<(w0: number, b: number, ids: Int32Array) => Promise<Float32Array>> {
  if (!opts.stream) return (_, b, ids) => model.hidden(ids, b, seqlen);
  const rows = seqlen * model.cfg.hiddenSize;
  const ids = windowTokens(tokens, 0, windows, seqlen);
  const x = await model.streamedHidden((l) => opts.stream!.prepare(l), ids, windows, seqlen, batch, opts.onBlock);
  return (w0, b) => model.final(x.slice(w0 * rows, (w0 + b) * rows), b * seqlen);
}

export async function referenceStates(model: Decoder, tokens: ArrayLike<number>, opts: EvalOptions = {}): Promise<ReferenceStates> {
  const plan = windowPlan(model, tokens, opts);
  const { seqlen, windows, batch } = plan;
  const D = model.cfg.embedDim;
  const hidden = new Float32Array(windows * seqlen * D);
  const nll = new Float32Array(windows * (seqlen - 1));
  const states = await finalStates(model, tokens, plan, opts);
  for (let w0 = 0; w0 < windows; w0 += batch) {
    const b = Math.min(batch, windows - w0);
    const ids = windowTokens(tokens, w0, b, seqlen);
    const h = await states(w0, b, ids);
    hidden.set(h, w0 * seqlen * D);
    for (let i = 0; i < b; i++) nll.set((await windowStats(model, h, ids, i, seqlen)).nll, (w0 + i) * (seqlen - 1));
  }
  return {
    head: model.head,
    ...(model.outer.headKernel ? { headKernel: model.outer.headKernel } : {}),
    hidden,
    nll,
    windows,
    seqlen,
    ...(model.cfg.finalSoftcap ? { softcap: model.cfg.finalSoftcap } : {}),
  };
}

/**
 * The head's statistics for window i of a batch (final states h, token ids ids) at its predicting positions
 * 0..seqlen-2, against window `refWindow` of the reference's states when given.
 */
async function windowStats(
  model: Decoder,
  h: Float32Array,
  ids: Int32Array,
  i: number,
  seqlen: number,
  ref?: ReferenceStates,
  refWindow = 0,
): Promise<HeadStats> {
  const { vocabSize: V, embedDim: D } = model.cfg;
  const rows = seqlen - 1;
  const rowsOf = (x: Float32Array, first: number): Float32Array => x.subarray(first * seqlen * D, (first * seqlen + rows) * D);
  const targets = ids.subarray(i * seqlen + 1, (i + 1) * seqlen);
  const refRows = ref && { h: rowsOf(ref.hidden, refWindow), w: ref.head };
  if (!model.cfg.finalSoftcap && !ref?.softcap && !model.outer.headKernel && !ref?.headKernel)
    return model.backend.headStats(rowsOf(h, i), model.head, rows, D, V, targets, refRows && { ref: refRows });
  // soft-capped logits (Gemma 2) and quantized heads: logits formed (capped), then scored, a slice of rows at a
  // time within SLICE_FLOATS (a whole window's over a 128256-token vocabulary would be 1 GB); the fused float head
  // kernels have neither
  const mine = headOf(model.backend, model.head, model.outer.headKernel, model.cfg.finalSoftcap, D, V);
  const theirs = ref && headOf(model.backend, ref.head, ref.headKernel, ref.softcap, D, V);
  const step = Math.max(1, Math.floor(SLICE_FLOATS / V));
  const parts: HeadStats[] = [];
  for (let r0 = 0; r0 < rows; r0 += step) {
    const n = Math.min(step, rows - r0);
    const slice = (x: Float32Array): Float32Array => x.subarray(r0 * D, (r0 + n) * D);
    const refLogits = theirs && (await theirs(slice(refRows!.h), n));
    parts.push(logitStats(await mine(slice(rowsOf(h, i)), n), n, V, targets.subarray(r0, r0 + n), refLogits));
  }
  return joinStats(parts);
}

/** Logits [n, vocab] from a head: a quantized head's kernel, else its rows a vocabulary slice at a time; capped. */
function headOf(
  backend: Backend,
  head: StoredRows,
  kernel: LinearKernel | undefined,
  cap: number | undefined,
  D: number,
  V: number,
): (x: Float32Array, n: number) => Promise<Float32Array> {
  return async (x, n) => softcap(kernel ? await kernel.apply(x, n) : await headLogits(backend, x, head, n, D, V), cap);
}

/** The statistics of consecutive slices of rows as one. */
function joinStats(parts: HeadStats[]): HeadStats {
  const { kl, agree } = parts[0]!;
  return {
    nll: concatArrays(parts.map((p) => p.nll)),
    ...(kl ? { kl: concatArrays(parts.map((p) => p.kl!)) } : {}),
    ...(agree ? { agree: concatArrays(parts.map((p) => p.agree!)) } : {}),
  };
}

/** The q-quantile of sorted values (nearest rank, as llama-perplexity's percentile). */
function percentile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))]!;
}

export async function evaluate(model: Decoder, tokens: ArrayLike<number>, opts: EvalOptions = {}): Promise<EvalResult> {
  const plan = windowPlan(model, tokens, opts);
  const { seqlen, windows, batch } = plan;
  const ref = opts.ref;
  if (ref && (ref.windows < windows || ref.seqlen !== seqlen)) throw new RangeError('reference states cover different windows');
  const t0 = performance.now();
  let nllSum = 0;
  let agreeSum = 0;
  const rows = seqlen - 1;
  const kls = ref && new Float64Array(windows * rows);
  let dp2 = 0;
  const states = await finalStates(model, tokens, plan, opts);
  for (let w0 = 0; w0 < windows; w0 += batch) {
    const b = Math.min(batch, windows - w0);
    const ids = windowTokens(tokens, w0, b, seqlen);
    const h = await states(w0, b, ids);
    for (let i = 0; i < b; i++) {
      const st = await windowStats(model, h, ids, i, seqlen, ref, w0 + i);
      nllSum += st.nll.reduce((a, x) => a + x, 0);
      if (st.agree) agreeSum += st.agree.reduce((a, x) => a + x, 0);
      if (kls && st.kl) {
        kls.set(st.kl, (w0 + i) * rows);
        const refNll = ref.nll.subarray((w0 + i) * rows, (w0 + i + 1) * rows);
        st.nll.forEach((x, r) => (dp2 += (Math.exp(-x) - Math.exp(-refNll[r]!)) ** 2));
      }
    }
    opts.onProgress?.(w0 + b, windows);
  }
  const n = windows * rows;
  const meanNll = nllSum / n;
  const result: EvalResult = {
    ppl: Math.exp(meanNll),
    meanNll,
    windows,
    seqlen,
    tokens: windows * seqlen,
    seconds: (performance.now() - t0) / 1000,
  };
  if (kls) {
    const kl = kls.reduce((a, x) => a + x, 0) / n;
    const variance = kls.reduce((a, x) => a + (x - kl) ** 2, 0) / Math.max(1, n - 1);
    const sorted = kls.sort();
    result.kl = kl;
    result.klUncertainty = Math.sqrt(variance / n);
    result.klPercentiles = {
      p999: percentile(sorted, 0.999),
      p99: percentile(sorted, 0.99),
      p95: percentile(sorted, 0.95),
      p90: percentile(sorted, 0.9),
      median: percentile(sorted, 0.5),
    };
    result.top1 = agreeSum / n;
    result.deltaPRms = Math.sqrt(dp2 / n);
  }
  return result;
}
