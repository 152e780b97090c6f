/** IEEE half and bfloat16 <-> float32 conversions (bulk, allocation-free inner loops). */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float32 -> half bits, round to nearest even (what torch's .half() does). */
export function floatToHalf(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r;
  }
  let r = mant >>> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) {
    r++;
    if (r === 0x400) {
      r = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | r;
}

/** Round a float32 to the nearest fp16 value (kept as float). */
export function roundToHalf(value: number): number {
  return halfToFloat(floatToHalf(value));
}

export function halfArrayToFloat(src: Uint16Array): Float32Array {
  return halfIntoFloat(src, new Float32Array(src.length));
}

/** Half bits widened into out[at..at+src.length) (exact: every half is a float32). */
export function halfIntoFloat(src: Uint16Array, out: Float32Array, at = 0): Float32Array {
  const table = halfTable();
  for (let i = 0; i < src.length; i++) out[at + i] = table[src[i]!]!;
  return out;
}

export function floatArrayToHalf(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = floatToHalf(src[i]!);
  return out;
}

export function bf16ArrayToFloat(src: Uint16Array): Float32Array {
  return bf16IntoFloat(src, new Float32Array(src.length));
}

/** bfloat16 bits widened into out[at..at+src.length): the high half of the float32's bits, exactly. */
export function bf16IntoFloat(src: Uint16Array, out: Float32Array, at = 0): Float32Array {
  const bits = new Uint32Array(out.buffer, out.byteOffset + at * 4, src.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i]! << 16;
  return out;
}

/**
 * The first 16-bit float with all its `exponent` bits set (Inf or NaN; 0x7c00 for IEEE half, 0x7f80 for bfloat16),
 * or -1.
 */
export function firstNonFinite16(data: Uint16Array, exponent: number): number {
  // a plain loop: findIndex's callback per element took 0.7 s of a 7B model's load per 131M-element table, this 0.13
  for (let i = 0; i < data.length; i++) if ((data[i]! & exponent) === exponent) return i;
  return -1;
}

let cachedHalfTable: Float32Array | undefined;
function halfTable(): Float32Array {
  if (!cachedHalfTable) {
    cachedHalfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) cachedHalfTable[h] = halfToFloat(h);
  }
  return cachedHalfTable;
}
