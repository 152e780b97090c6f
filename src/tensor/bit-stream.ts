/**
 * Value i of a little-endian stream of `bits`-bit values held in int32 words read through `word` — GPTQ's
 * packing (see formats/gptq-pack.ts): for 3 bits some values straddle two words.
 */
export function streamValue(word: (w: number) => number, i: number, bits: number): number {
  const bit = i * bits;
  const off = bit & 31;
  let v = word(bit >>> 5) >>> off;
  if (off + bits > 32) v |= word((bit >>> 5) + 1) << (32 - off);
  return v & ((1 << bits) - 1);
}
