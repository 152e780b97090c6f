/** Seeded random calibration windows, as the reference draws them: uniform start offsets into the token stream. */

/** mulberry32: a small, well-mixed 32-bit PRNG, so a seed gives the same windows on every platform */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** nsamples windows of seqlen tokens, concatenated: [nsamples * seqlen] */
export function calibrationWindows(tokens: ArrayLike<number>, nsamples: number, seqlen: number, seed: number): Int32Array {
  if (tokens.length <= seqlen) throw new RangeError(`calibration text has ${tokens.length} tokens, need more than seqlen ${seqlen}`);
  const rand = seededRandom(seed);
  const out = new Int32Array(nsamples * seqlen);
  for (let i = 0; i < nsamples; i++) {
    const start = Math.floor(rand() * (tokens.length - seqlen));
    for (let j = 0; j < seqlen; j++) out[i * seqlen + j] = tokens[start + j]!;
  }
  return out;
}
