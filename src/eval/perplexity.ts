import type { Llama } from '../models/llama.js';

/**
 * Perplexity by the reference protocol: the first `windows` non-overlapping windows of `seqlen` tokens;
 * in each, tokens 1..seqlen-1 are predicted from their prefix; ppl = exp(mean NLL). With a reference model,
 * also the mean KL(ref || model) of next-token distributions and top-1 agreement over the same positions.
 */
export interface EvalOptions {
  windows?: number;
  seqlen?: number;
  /** windows per forward pass */
  batch?: number;
  ref?: Llama;
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

export async function evaluate(model: Llama, tokens: ArrayLike<number>, opts: EvalOptions = {}): Promise<EvalResult> {
  const seqlen = opts.seqlen ?? Math.min(256, model.cfg.maxPositions);
  if (seqlen < 2 || seqlen > model.cfg.maxPositions) throw new RangeError(`seqlen ${seqlen} must be in 2..${model.cfg.maxPositions}`);
  const available = Math.floor(tokens.length / seqlen);
  const windows = Math.min(opts.windows ?? 128, available);
  if (windows < 1) throw new RangeError(`text has ${tokens.length} tokens: too short for one window of ${seqlen}`);
  const batch = opts.batch ?? 8;
  const t0 = performance.now();
  const { vocabSize: V, hiddenSize: D } = model.cfg;
  let nllSum = 0;
  let klSum = 0;
  let agreeSum = 0;
  const rows = seqlen - 1;
  for (let w0 = 0; w0 < windows; w0 += batch) {
    const b = Math.min(batch, windows - w0);
    const ids = Int32Array.from({ length: b * seqlen }, (_, i) => tokens[w0 * seqlen + i]!);
    const [h, hr] = await Promise.all([model.hidden(ids, b, seqlen), opts.ref?.hidden(ids, b, seqlen)]);
    for (let i = 0; i < b; i++) {
      // positions 0..seqlen-2 predict tokens 1..seqlen-1
      const sel = (x: Float32Array): Float32Array => x.subarray(i * seqlen * D, (i * seqlen + rows) * D);
      const targets = ids.subarray(i * seqlen + 1, (i + 1) * seqlen);
      const st = await model.backend.headStats(sel(h), model.head, rows, D, V, targets, hr && { h: sel(hr), w: opts.ref!.head });
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
  if (opts.ref) {
    result.kl = klSum / n;
    result.top1 = agreeSum / n;
  }
  return result;
}
