// The WebAssembly text of the packed 4-bit matvec kernel (src/tensor/matvec4.ts); scripts/build-wasm.mjs assembles it.

/*
 * y[r] = Σ_b s[r, g(b)]·xs[b]·Σ_{c in b} q[r, c]·xq[c] − Σ_b m[r, g(b)]·cx[b] for rows r0..r1: one batch-1 product
 * of a GPTQ 4-bit layer with activations quantized to int8 per block of `bs` columns (bs 32, 64 or 128), as
 * llama.cpp's Q4_0·Q8_0 dot does. q are the codes 0..15, xq the int8 activations (|xq| ≤ 127) with scale xs[b];
 * s the group's scale, m = s·zero, cx[b] = xs[b]·Σ_{c in b} xq[c] (matvec4.ts computes both), g(b) the block's
 * group (bg, int32 per block).
 *
 * Codes: each row's cols/2 bytes; byte j of each run of 16 holds column j of that run's 32 in its low nibble and
 * column 16 + j in its high one, so one mask and one 16-bit shift give the 32 codes in column order. The products
 * are i16x8.relaxed_dot_i8x16_i7x16_s (pmaddubsw on x86): with the codes (0..15, inside i7) as its second operand
 * the relaxed instruction is deterministic, and a lane's sum of two products is at most 2·15·127 = 3810, so the
 * i16 lanes hold the eight of a 128-column block (30480) without overflow; each block widens to i32 and float32
 * once. One row a step: two rows sharing each load of x measured 0.55x as fast and four 0.7x (V8 keeps fewer
 * of the vectors in registers; 16 x 11008x4096 layers, one thread, alternated: 16.9 / 8.9 / 12.7 GB/s).
 */
const splat8 = (v) => `(v128.const i8x16 ${Array(16).fill(v).join(' ')})`;
const zero = '(v128.const i32x4 0 0 0 0)';

/** the 16 codes' products with x's 16 int8 at `x`, pairs summed into the i16 accumulator */
const dot = (x, codes) =>
  `(local.set $a (i16x8.add (local.get $a) (i16x8.relaxed_dot_i8x16_i7x16_s (v128.load offset=${x} (local.get $xp)) (v128.and ${codes} (local.get $mask)))))`;

export const WAT = `(module
  (import "env" "memory" (memory 1 65536 shared))
  ;; w: codes [rows, cols/2]; sm: [rows, groups] pairs (s, m) float32; bg: int32 [blocks]; xq: int8 [cols];
  ;; xs, cx: float32 [blocks]; y: float32 [rows]. Rows r0..r1.
  (func (export "matvec4")
      (param $w i32) (param $sm i32) (param $bg i32) (param $xq i32) (param $xs i32) (param $cx i32) (param $y i32)
      (param $r0 i32) (param $r1 i32) (param $cols i32) (param $bs i32) (param $groups i32)
    (local $r i32) (local $half i32) (local $p i32) (local $end i32) (local $bend i32) (local $xp i32) (local $b i32)
    (local $smr i32) (local $smg i32) (local $z f32) (local $v v128) (local $mask v128) (local $a v128) (local $acc v128)
    (local.set $mask ${splat8(15)})
    (local.set $half (i32.shr_u (local.get $cols) (i32.const 1)))
    (local.set $r (local.get $r0))
    (block $done (loop $rows
      (br_if $done (i32.ge_u (local.get $r) (local.get $r1)))
      (local.set $p (i32.add (local.get $w) (i32.mul (local.get $r) (local.get $half))))
      (local.set $end (i32.add (local.get $p) (local.get $half)))
      (local.set $smr (i32.add (local.get $sm) (i32.shl (i32.mul (local.get $r) (local.get $groups)) (i32.const 3))))
      (local.set $acc ${zero})
      (local.set $z (f32.const 0))
      (local.set $xp (local.get $xq))
      (local.set $b (i32.const 0))
      (loop $blocks
        (local.set $bend (i32.add (local.get $p) (i32.shr_u (local.get $bs) (i32.const 1))))
        (if (i32.gt_u (local.get $bend) (local.get $end)) (then (local.set $bend (local.get $end))))
        (local.set $a ${zero})
        (loop $chunks
          (local.set $v (v128.load (local.get $p)))
          ${dot(0, '(local.get $v)')}
          ${dot(16, '(i16x8.shr_u (local.get $v) (i32.const 4))')}
          (local.set $p (i32.add (local.get $p) (i32.const 16)))
          (local.set $xp (i32.add (local.get $xp) (i32.const 32)))
          (br_if $chunks (i32.lt_u (local.get $p) (local.get $bend))))
        ;; the block's group: s·xs·dot into the float32 lanes, m·cx into the zero term
        (local.set $smg (i32.add (local.get $smr) (i32.shl (i32.load (i32.add (local.get $bg) (i32.shl (local.get $b) (i32.const 2)))) (i32.const 3))))
        (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (f32x4.convert_i32x4_s (i32x4.extadd_pairwise_i16x8_s (local.get $a)))
          (f32x4.splat (f32.mul (f32.load (local.get $smg)) (f32.load (i32.add (local.get $xs) (i32.shl (local.get $b) (i32.const 2)))))))))
        (local.set $z (f32.add (local.get $z)
          (f32.mul (f32.load offset=4 (local.get $smg)) (f32.load (i32.add (local.get $cx) (i32.shl (local.get $b) (i32.const 2)))))))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (br_if $blocks (i32.lt_u (local.get $p) (local.get $end))))
      (f32.store (i32.add (local.get $y) (i32.shl (local.get $r) (i32.const 2)))
        (f32.sub
          (f32.add (f32.add (f32x4.extract_lane 0 (local.get $acc)) (f32x4.extract_lane 1 (local.get $acc)))
            (f32.add (f32x4.extract_lane 2 (local.get $acc)) (f32x4.extract_lane 3 (local.get $acc))))
          (local.get $z)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rows)))
  )
)
`;
