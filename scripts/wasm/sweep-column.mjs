// The WebAssembly text of the GPTQ sweep's column kernel (src/tensor/sweep-column.ts); scripts/build-wasm.mjs
// assembles it.

/*
 * Two rows a step in float64x2 lanes, each lane's arithmetic the very operations of the sweep's TypeScript
 * (src/quant/gptq.ts, quantizeColumn and subtractUpdates) in the same order, so the results are the same bits:
 * f64x2.nearest rounds half to even as roundHalfEven does, pmax/pmin are the clamp's `q < 0 ? 0 : q > maxq ?
 * maxq : q`, there is no fused multiply-add, and float32 demotion rounds to nearest even as a Float32Array store
 * does. The loss is summed by a scalar loop over the rows in order, as the TypeScript sums it. Rows must be even.
 */
const splat = (v) => `(f64x2.splat ${v})`;
const at = (base) => `(v128.load (i32.add (local.get ${base}) (local.get $o)))`;

export const WAT = `(module
  (import "env" "memory" (memory 1))

  ;; One column x [rows] rounded to each row's affine grid (scale, zero [rows] float64): the code of row r at
  ;; codes + r·stride, the error scaled by 1/d at err (float64) and e32 (float32); returns Σ e²/2 in row order.
  (func (export "quantize")
    (param $x i32) (param $rows i32) (param $scale i32) (param $zero i32) (param $maxq f64) (param $d f64)
    (param $err i32) (param $e32 i32) (param $codes i32) (param $stride i32) (result f64)
    (local $o i32) (local $end i32) (local $c i32) (local $loss f64) (local $t f64)
    (local $v v128) (local $s v128) (local $z v128) (local $q v128) (local $e v128) (local $qi v128)
    (local.set $end (i32.shl (local.get $rows) (i32.const 3)))
    (local.set $c (local.get $codes))
    (loop $step
      (local.set $v ${at('$x')})
      (local.set $s ${at('$scale')})
      (local.set $z ${at('$zero')})
      (local.set $q (f64x2.add (f64x2.nearest (f64x2.div (local.get $v) (local.get $s))) (local.get $z)))
      (local.set $q (f64x2.pmin (f64x2.pmax (local.get $q) ${splat('(f64.const 0)')}) ${splat('(local.get $maxq)')}))
      (local.set $e
        (f64x2.div
          (f64x2.sub (local.get $v) (f64x2.mul (local.get $s) (f64x2.sub (local.get $q) (local.get $z))))
          ${splat('(local.get $d)')}))
      (v128.store (i32.add (local.get $err) (local.get $o)) (local.get $e))
      (v128.store64_lane 0
        (i32.add (local.get $e32) (i32.shr_u (local.get $o) (i32.const 1)))
        (f32x4.demote_f64x2_zero (local.get $e)))
      (local.set $qi (i32x4.trunc_sat_f64x2_u_zero (local.get $q)))
      (i32.store8 (local.get $c) (i32x4.extract_lane 0 (local.get $qi)))
      (i32.store8 (i32.add (local.get $c) (local.get $stride)) (i32x4.extract_lane 1 (local.get $qi)))
      (local.set $c (i32.add (local.get $c) (i32.shl (local.get $stride) (i32.const 1))))
      (local.set $o (i32.add (local.get $o) (i32.const 16)))
      (br_if $step (i32.lt_u (local.get $o) (local.get $end))))
    (local.set $o (i32.const 0))
    (loop $sum
      (local.set $t (f64.load (i32.add (local.get $err) (local.get $o))))
      (local.set $loss (f64.add (local.get $loss) (f64.div (f64.mul (local.get $t) (local.get $t)) (f64.const 2))))
      (local.set $o (i32.add (local.get $o) (i32.const 8)))
      (br_if $sum (i32.lt_u (local.get $o) (local.get $end))))
    (local.get $loss))

  ;; dst [rows] −= src [rows]·u, float64
  (func (export "update") (param $dst i32) (param $src i32) (param $u f64) (param $rows i32)
    (local $o i32) (local $end i32) (local $uu v128)
    (local.set $end (i32.shl (local.get $rows) (i32.const 3)))
    (local.set $uu ${splat('(local.get $u)')})
    (loop $step
      (v128.store (i32.add (local.get $dst) (local.get $o))
        (f64x2.sub ${at('$dst')} (f64x2.mul ${at('$src')} (local.get $uu))))
      (local.set $o (i32.add (local.get $o) (i32.const 16)))
      (br_if $step (i32.lt_u (local.get $o) (local.get $end))))))
`;
