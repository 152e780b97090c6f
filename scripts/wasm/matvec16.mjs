// The WebAssembly text of the 16-bit matvec kernel (src/tensor/head16.ts); scripts/build-wasm.mjs assembles it.

/*
 * y[r] = Σ_c w[r, c]·x[c] for rows r0..r1 of a 16-bit [rows, cols] table, x and y float32, cols a multiple of 16.
 *
 * A 16-byte load holds 8 weights; as four 32-bit lanes, lane k holds weight 2k in its low half and 2k+1 in its
 * high half. Shifting each lane left 16 bits puts the even weights in the top half of a float32, masking off the
 * low half does the same for the odd ones: no shuffles. x therefore comes with each run of 8 reordered
 * [x0 x2 x4 x6 x1 x3 x5 x7] (head16.ts does that once a call). bfloat16 is float32's top half, so that is the
 * value. An IEEE half there is rebiased: sign | (magnitude >> 3) is the value times 2^-112 as float32, times
 * 2^112 after (exact for every finite half, subnormals included). A subnormal half makes that product's operand
 * a subnormal float32, which x86 multiplies on a slow path, so `f16r` rebiases in integers instead, adding 112 to
 * the exponent: exact wherever the half's exponent is not 0, and no float32 operation at all before the product.
 * Where it is 0 (zeros, subnormals) the result is off by an amount head16.ts corrects after the kernel (a head of
 * N(0, 0.02) halves, 0.24% subnormal, three rounds alternated, best of 80: 32000 x 4096 14.9-15.3 → 12.6-13.3 ms a
 * matvec, 32000 x 2048 7.2-8.2 → 6.7-7.9 ms; the list costs a scan when the head opens, see there). Four
 * accumulators of four lanes, 16 columns a step; V8 does not inline wasm calls here, so each format gets its own
 * loop, made from one template.
 */
const splat = (v) => `(v128.const i32x4 ${v} ${v} ${v} ${v})`;
/*
 * A half in a lane's top 16 bits, shifted right 3 with its sign copied: the sign stays bit 31, exponent and mantissa
 * land in float32's bits 27..13, and the mask clears the copies of the sign (30..28) and whatever was below the
 * half (12..0). An odd weight is already in its lane's top half; an even one is shifted there first. Three or four
 * integer operations a lane, where a separate sign mask, magnitude mask, shift and or took five or six: one thread
 * over a 32000 x 4096 table, best of 30 alternated, the same sums to the bit, f16r 22.6 → 16.7 ms, f16 35.2 → 26.9.
 */
const halfBits = (top) => `(v128.and (i32x4.shr_s ${top} (i32.const 3)) ${splat('0x8fffe000')})`;
const evenTop = (v) => `(i32x4.shl ${v} (i32.const 16))`;
/** Each format's float32 from a lane's top 16 bits (`top`, lower bits arbitrary for the f16 formats). */
const FORMATS = {
  bf16: { even: evenTop, odd: (v) => `(v128.and ${v} ${splat('0xffff0000')})`, widen: (top) => top },
  f16: { even: evenTop, odd: (v) => v, widen: (top) => `(f32x4.mul ${halfBits(top)} (v128.const f32x4 0x1p112 0x1p112 0x1p112 0x1p112))` },
  // the rebias cannot carry into the sign: the magnitude is below 0x10000000 and adds 0x38000000
  f16r: { even: evenTop, odd: (v) => v, widen: (top) => `(i32x4.add ${halfBits(top)} ${splat('0x38000000')})` },
};

function matvec(name, { even, odd, widen }) {
  const term = (acc, half, offset) =>
    `(local.set ${acc} (f32x4.add (local.get ${acc}) (f32x4.mul ${widen(half('(local.get $v)'))} (v128.load offset=${offset} (local.get $xp)))))`;
  return `
  (func (export "${name}") (param $w i32) (param $x i32) (param $y i32) (param $r0 i32) (param $r1 i32) (param $cols i32)
    (local $r i32) (local $wp i32) (local $xp i32) (local $end i32) (local $stride i32)
    (local $v v128) (local $s v128) (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local.set $stride (i32.shl (local.get $cols) (i32.const 1)))
    (local.set $r (local.get $r0))
    (block $done
      (loop $rows
        (br_if $done (i32.ge_u (local.get $r) (local.get $r1)))
        (local.set $wp (i32.add (local.get $w) (i32.mul (local.get $r) (local.get $stride))))
        (local.set $end (i32.add (local.get $wp) (local.get $stride)))
        (local.set $xp (local.get $x))
        (local.set $a0 ${splat(0)})
        (local.set $a1 ${splat(0)})
        (local.set $a2 ${splat(0)})
        (local.set $a3 ${splat(0)})
        (loop $step
          (local.set $v (v128.load (local.get $wp)))
          ${term('$a0', even, 0)}
          ${term('$a1', odd, 16)}
          (local.set $v (v128.load offset=16 (local.get $wp)))
          ${term('$a2', even, 32)}
          ${term('$a3', odd, 48)}
          (local.set $wp (i32.add (local.get $wp) (i32.const 32)))
          (local.set $xp (i32.add (local.get $xp) (i32.const 64)))
          (br_if $step (i32.lt_u (local.get $wp) (local.get $end))))
        (local.set $s (f32x4.add (f32x4.add (local.get $a0) (local.get $a1)) (f32x4.add (local.get $a2) (local.get $a3))))
        (f32.store (i32.add (local.get $y) (i32.shl (local.get $r) (i32.const 2)))
          (f32.add
            (f32.add (f32x4.extract_lane 0 (local.get $s)) (f32x4.extract_lane 1 (local.get $s)))
            (f32.add (f32x4.extract_lane 2 (local.get $s)) (f32x4.extract_lane 3 (local.get $s)))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $rows))))`;
}

export const WAT = `(module
  (import "env" "memory" (memory 1 65536 shared))${Object.entries(FORMATS)
    .map(([name, format]) => matvec(name, format))
    .join('')})
`;
