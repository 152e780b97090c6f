import { seededRandom } from '../calib/windows.js';

/**
 * Next-token choice from logits: greedy at temperature 0, else softmax(logits / T) restricted to the top-k
 * tokens and then to the smallest set whose probability reaches top-p (nucleus), sampled with a seeded RNG.
 */
export interface SamplingOptions {
  /** 0 = greedy (default) */
  temperature?: number;
  /** keep the k most likely tokens (0 = all) */
  topK?: number;
  /** keep the most likely tokens up to this cumulative probability, in (0, 1] */
  topP?: number;
  seed?: number;
}

export function validateSampling(o: SamplingOptions): void {
  if (o.temperature !== undefined && !(o.temperature >= 0 && Number.isFinite(o.temperature)))
    throw new RangeError(`temperature ${o.temperature} must be >= 0`);
  if (o.topK !== undefined && !(Number.isInteger(o.topK) && o.topK >= 0))
    throw new RangeError(`top-k ${o.topK} must be a non-negative integer`);
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) throw new RangeError(`top-p ${o.topP} must be in (0, 1]`);
}

export function argmax(x: Float32Array): number {
  let best = 0;
  let max = x[0]!;
  for (let j = 1; j < x.length; j++) {
    if (x[j]! > max) {
      max = x[j]!;
      best = j;
    }
  }
  return best;
}

export function makeSampler(o: SamplingOptions): (logits: Float32Array) => number {
  validateSampling(o);
  const T = o.temperature ?? 0;
  if (T === 0) return argmax;
  const rand = seededRandom(o.seed ?? 0);
  return (logits) => {
    let order = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]!);
    if (o.topK) order = order.slice(0, o.topK);
    const max = logits[order[0]!]!;
    const p = order.map((i) => Math.exp((logits[i]! - max) / T));
    const total = p.reduce((a, b) => a + b, 0);
    let keep = order.length;
    if (o.topP !== undefined && o.topP < 1) {
      let cum = 0;
      for (keep = 0; keep < order.length && cum < o.topP * total; keep++) cum += p[keep]!;
    }
    const mass = p.slice(0, keep).reduce((a, b) => a + b, 0);
    let u = rand() * mass;
    for (let i = 0; i < keep; i++) {
      u -= p[i]!;
      if (u <= 0) return order[i]!;
    }
    return order[keep - 1]!;
  };
}
