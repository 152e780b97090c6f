import { softcap, type Decoder } from '../models/index.js';
import { logitStats } from '../tensor/ref.js';

/**
 * Perplexity by the reference protocol: the first `windows` non-overlapping windows of `seqlen` tokens;
 * in each, tokens 1..seqlen-1 are predicted from their prefix; ppl = exp(mean NLL). With a reference model's
 * states, also the mean KL(ref || model) of next-token distributions and top-1 agreement at the same positions.
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
}

export interface EvalResult {
  ppl: number;
  meanNll: number;
  windows: number;
  seqlen: number;
  tokens: number;
  kl?: number;
  top1?: number;
  seconds: number;
}

/** A reference model's final hidden states over the eval windows, computed once and reused for every comparison. */
export interface ReferenceStates {
  head: Float32Array;
  /** the reference model's logit soft-cap (Gemma 2), if any */
  softcap?: number;
  /** [windows * seqlen, hidden] */
  hidden: Float32Array;
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

export async function referenceStates(model: Decoder, tokens: ArrayLike<number>, opts: EvalOptions = {}): Promise<ReferenceStates> {
  const { seqlen, windows, batch } = windowPlan(model, tokens, opts);
  const D = model.cfg.embedDim;
  const hidden = new Float32Array(windows * seqlen * D);
  for (let w0 = 0; w0 < windows; w0 += batch) {
    const b = Math.min(batch, windows - w0);
    hidden.set(await model.hidden(windowTokens(tokens, w0, b, seqlen), b, seqlen), w0 * seqlen * D);
  }
  return { head: model.head, hidden, windows, seqlen, ...(model.cfg.finalSoftcap ? { softcap: model.cfg.finalSoftcap } : {}) };
}

export async function evaluate(model: Decoder, tokens: ArrayLike<number>, opts: EvalOptions = {}): Promise<EvalResult> {
  const { seqlen, windows, batch } = windowPlan(model, tokens, opts);
  const ref = opts.ref;
  if (ref && (ref.windows < windows || ref.seqlen !== seqlen)) throw new RangeError('reference states cover different windows');
  const t0 = performance.now();
  const { vocabSize: V, embedDim: D } = model.cfg;
  let nllSum = 0;
  let klSum = 0;
  let agreeSum = 0;
  const rows = seqlen - 1;
  for (let w0 = 0; w0 < windows; w0 += batch) {
    const b = Math.min(batch, windows - w0);
    const ids = windowTokens(tokens, w0, b, seqlen);
    const h = await model.hidden(ids, b, seqlen);
    for (let i = 0; i < b; i++) {
      // positions 0..seqlen-2 of window `first` predict its tokens 1..seqlen-1
      const rowsOf = (x: Float32Array, first: number): Float32Array => x.subarray(first * seqlen * D, (first * seqlen + rows) * D);
      const targets = ids.subarray(i * seqlen + 1, (i + 1) * seqlen);
      const refRows = ref && { h: rowsOf(ref.hidden, w0 + i), w: ref.head };
      const st =
        model.cfg.finalSoftcap || ref?.softcap
          ? // soft-capped logits (Gemma 2): formed, capped, then scored; the fused head kernels have no cap
            logitStats(
              softcap(await model.backend.matmulNT(rowsOf(h, i), model.head, rows, V, D), model.cfg.finalSoftcap),
              rows,
              V,
              targets,
              refRows && softcap(await model.backend.matmulNT(refRows.h, refRows.w, rows, V, D), ref.softcap),
            )
          : await model.backend.headStats(rowsOf(h, i), model.head, rows, D, V, targets, refRows);
      nllSum += st.nll.reduce((a, x) => a + x, 0);
      if (st.kl) klSum += st.kl.reduce((a, x) => a + x, 0);
      if (st.agree) agreeSum += st.agree.reduce((a, x) => a + x, 0);
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
  if (ref) {
    result.kl = klSum / n;
    result.top1 = agreeSum / n;
  }
  return result;
}
