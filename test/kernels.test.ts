import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AttentionShape } from '../src/tensor/backend.js';
import { ortBackend } from '../src/tensor/ort.js';
import * as ref from '../src/tensor/ref.js';
import { refBackend } from '../src/tensor/ref.js';
import { attentionJs } from '../src/tensor/attention-js.js';
import { nativeDecodeAttention, nativeHalfKv, nativeKernel, nativeRmsNorm, useNativeKernel } from '../src/tensor/native.js';
import { floatArrayToHalf, halfArrayToFloat } from '../src/io/fp16.js';
import { floatRows, rowsF32, type StoredRows } from '../src/tensor/rows.js';

/*
 * Every fast kernel against its plain-TS definition. Tolerance: float32 accumulation in a different order,
 * so |fast - ref| <= 1e-5 * (1 + |ref| scale) for sums of up to a few thousand terms.
 */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 - 0.5;
  };
}
const rand = (n: number, r: () => number): Float32Array => Float32Array.from({ length: n }, r);

function assertClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    // the message only on failure: building one per element dominated the wide Hessian case's time
    if (!(err <= tol * (1 + Math.abs(want[i]!)))) assert.fail(`${what}[${i}]: ${got[i]} vs ${want[i]}`);
  }
}

const GEMM_SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [1, 288, 288],
  [7, 13, 5],
  [33, 65, 129],
  [128, 96, 257],
  [255, 3, 768],
];

test('matmulNT, matmulNN and prepared float linear kernels equal the definition on random and edge shapes', async () => {
  const r = rng(1);
  for (const [m, n, k] of GEMM_SHAPES) {
    const a = rand(m * k, r);
    const b = rand(n * k, r);
    const want = ref.matmulNT(a, b, m, n, k);
    assertClose(await ortBackend.matmulNT(a, b, m, n, k), want, 1e-5 * Math.sqrt(k), `gemm ${m}x${n}x${k}`);
    const linear = await ortBackend.floatLinear(b, n, k);
    assertClose(await linear.apply(a, m), want, 1e-5 * Math.sqrt(k), `prepared linear ${m}x${n}x${k}`);
    const bT = ref.transpose(b, n, k); // [k, n]
    assertClose(await ortBackend.matmulNN(a, bT, m, n, k), want, 1e-5 * Math.sqrt(k), `A·B ${m}x${n}x${k}`);
    assertClose(await refBackend.matmulNN(a, bT, m, n, k), want, 1e-5 * Math.sqrt(k), `reference A·B ${m}x${n}x${k}`);
    // a residual update: the addend plus the product, the addend itself untouched
    const addend = rand(m * n, r);
    const kept = addend.slice();
    const sum = want.map((v, i) => v + addend[i]!);
    assertClose(await ortBackend.matmulNT(a, b, m, n, k, addend), sum, 1e-5 * Math.sqrt(k), `C + A·Bᵀ ${m}x${n}x${k}`);
    assert.deepEqual(addend, kept, `C + A·Bᵀ ${m}x${n}x${k} left its addend`);
    assert.deepEqual(await refBackend.matmulNT(a, b, m, n, k, addend), sum, `reference C + A·Bᵀ ${m}x${n}x${k}`);
  }
});

test('rmsNorm and swiglu equal their definitions', async () => {
  const r = rng(6);
  for (const [m, n, k] of [
    [1, 1, 1],
    [7, 13, 5],
    [64, 768, 288],
    [3, 1, 4100], // the native norm's vectors of 16 and 8, and a tail
    [512, 64, 768], // above the size where the ORT backend stops handing work to the small-work kernels
  ] as [number, number, number][]) {
    const x = rand(m * k, r);
    const w = rand(k, r);
    assertClose(await ortBackend.rmsNorm(x, w, m, 1e-5), ref.rmsNorm(x, w, m, 1e-5), 1e-5, `rmsNorm ${m}x${k}`);
    const native = nativeRmsNorm(x, w, m, 1e-5);
    if (nativeBuilt) assert.ok(native, 'the native norm is built');
    if (native) assertClose(native, ref.rmsNorm(x, w, m, 1e-5), 1e-5, `native rmsNorm ${m}x${k}`);
    const wg = rand(n * k, r);
    const wu = rand(n * k, r);
    assertClose(await ortBackend.swiglu(x, wg, wu, m, n, k), ref.swiglu(x, wg, wu, m, n, k), 1e-5 * Math.sqrt(k), `swiglu ${m}x${n}x${k}`);
  }
});

test('gram XᵀY equals the definition on random and edge shapes', async () => {
  const r = rng(5);
  for (const [rows, cols] of [
    [1, 1],
    [3, 7],
    [257, 33],
    [37, 516],
  ] as [number, number][]) {
    const x = rand(rows * cols, r);
    const y = rand(rows * cols, r);
    const tol = 1e-5 * Math.sqrt(rows);
    assertClose(await ortBackend.gram(x, rows, cols), ref.gram(x, rows, cols), tol, `gram ${rows}x${cols}`);
    assertClose(await ortBackend.gram(x, rows, cols, y), ref.gram(x, rows, cols, y), tol, `cross gram ${rows}x${cols}`);
  }
});

/*
 * The Hessian update keep·H + add·XᵀX from the panel graph equals the float64 definition on and above the
 * diagonal and leaves the entries below it alone, for one panel (under 512 columns), eight panels of 64 with a
 * wider last one (516 = 7·64 + 68; 1000 = 7·112 + 216), and a second call on top of the first.
 */
test('accumulateGram updates the upper triangle as the definition does', async () => {
  const r = rng(6);
  for (const [rows, cols] of [
    [3, 7],
    [1024, 96],
    [37, 516],
    [5, 1000],
    // wide enough for more than 8 panels (9: eight of 640 columns and one of 780)
    [3, 5900],
  ] as [number, number][]) {
    const start = Float64Array.from(rand(cols * cols, r));
    const [got, want] = [start.slice(), start.slice()];
    for (const [keep, add] of [
      [0, 2],
      [0.25, 1.5],
    ] as [number, number][]) {
      const x = rand(rows * cols, r);
      await ortBackend.accumulateGram(got, x, rows, cols, keep, add);
      await refBackend.accumulateGram(want, x, rows, cols, keep, add);
    }
    assertClose(got, want, 1e-5 * Math.sqrt(rows), `accumulateGram ${rows}x${cols}`);
    let changed: string | undefined;
    for (let i = 0; i < cols && !changed; i++)
      for (let j = 0; j < i; j++) if (got[i * cols + j] !== start[i * cols + j]) changed ??= `[${i},${j}]`;
    assert.equal(changed, undefined, `${rows}x${cols}: below the diagonal, changed at`);
  }
});

const ATTENTION_SHAPES: AttentionShape[] = [
  { batch: 1, seq: 1, ctx: 1, heads: 1, kvHeads: 1, headDim: 1 },
  { batch: 2, seq: 5, ctx: 5, heads: 3, kvHeads: 3, headDim: 8 },
  { batch: 1, seq: 1, ctx: 9, heads: 4, kvHeads: 2, headDim: 6 }, // one decode step after a cache of 8
  { batch: 1, seq: 3, ctx: 7, heads: 6, kvHeads: 2, headDim: 48 }, // several new positions after a cache of 4
  { batch: 3, seq: 17, ctx: 17, heads: 6, kvHeads: 6, headDim: 48 },
  // large enough to run on onnxruntime rather than the small-work plain-TS path: on one thread (a decode step
  // with 8 query heads a kv head, as TinyLlama's; the 17-position batch) and on all (the two after)
  { batch: 1, seq: 1, ctx: 70, heads: 8, kvHeads: 1, headDim: 64 },
  { batch: 1, seq: 4, ctx: 260, heads: 8, kvHeads: 2, headDim: 64 },
  { batch: 3, seq: 64, ctx: 64, heads: 6, kvHeads: 6, headDim: 48 },
  // onnxruntime's query blocks of 256: two sequences of three blocks (the last of 88), and blocks after a cache of 200
  { batch: 2, seq: 600, ctx: 600, heads: 4, kvHeads: 2, headDim: 32 },
  { batch: 1, seq: 300, ctx: 500, heads: 4, kvHeads: 4, headDim: 16 },
];

test('attention equals the definition, causal, with caches and grouped kv heads', async () => {
  const r = rng(2);
  for (const s of ATTENTION_SHAPES) {
    const q = rand(s.batch * s.seq * s.heads * s.headDim, r);
    const k = rand(s.batch * s.ctx * s.kvHeads * s.headDim, r);
    const v = rand(s.batch * s.ctx * s.kvHeads * s.headDim, r);
    const want = ref.attention(q, k, v, s);
    assertClose(await ortBackend.attention(q, k, v, s), want, 1e-5, `attention ${JSON.stringify(s)}`);
    assertClose(attentionJs(q, k, v, s), want, 1e-5, `small-case TS attention ${JSON.stringify(s)}`);
  }
});

test('sliding windows, soft-capping and ALiBi: onnxruntime (window mask) and the TS kernel equal the definition', async () => {
  const r = rng(5);
  const slopes = Float32Array.from([0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]);
  for (const base of ATTENTION_SHAPES) {
    for (const extra of [{ window: 5 }, { softcap: 2 }, { alibi: slopes.subarray(0, base.heads) }, { window: 3, softcap: 1.5 }]) {
      const s = { ...base, ...extra };
      const q = rand(s.batch * s.seq * s.heads * s.headDim, r);
      const k = rand(s.batch * s.ctx * s.kvHeads * s.headDim, r);
      const v = rand(s.batch * s.ctx * s.kvHeads * s.headDim, r);
      const want = ref.attention(q, k, v, s);
      assertClose(
        await ortBackend.attention(q, k, v, s),
        want,
        1e-5,
        `attention ${JSON.stringify({ ...base, ...extra, alibi: undefined })}`,
      );
      assertClose(attentionJs(q, k, v, s), want, 1e-5, `TS attention ${JSON.stringify({ ...base, ...extra, alibi: undefined })}`);
    }
  }
  // a window shorter than the context really masks: the result differs from full attention
  const s = { batch: 1, seq: 8, ctx: 8, heads: 2, kvHeads: 2, headDim: 4 };
  const q = rand(64, r);
  const k = rand(64, r);
  const v = rand(64, r);
  const full = ref.attention(q, k, v, s);
  const windowed = ref.attention(q, k, v, { ...s, window: 2 });
  assert.ok(full.some((x, i) => Math.abs(x - windowed[i]!) > 1e-3));
});

const nativeBuilt = process.platform === 'linux' && process.arch === 'x64';

test("a KV cache's head-major layout (kvCapacity): every kernel reads it as the definition reads the same keys position-major", async () => {
  const r = rng(7);
  // decode steps (the onnxruntime graph over the cache's rows; the TS kernel where small or capped) and a prompt
  // continued over a cache (several new positions); GQA, a window, a soft-cap; capacities beyond ctx (unused rows
  // hold noise here: only ctx positions may be read)
  const cases = [
    { seq: 1, ctx: 40, capacity: 64, heads: 32, kvHeads: 32, headDim: 128 },
    { seq: 1, ctx: 300, capacity: 512, heads: 32, kvHeads: 4, headDim: 64 },
    { seq: 1, ctx: 300, capacity: 300, heads: 8, kvHeads: 2, headDim: 64, window: 17 },
    { seq: 1, ctx: 9, capacity: 64, heads: 4, kvHeads: 2, headDim: 16 },
    // a head size of 8s, not 16s: the native kernel's 8-float (AVX2) loop on an AVX-512 machine
    { seq: 1, ctx: 33, capacity: 48, heads: 6, kvHeads: 3, headDim: 24 },
    { seq: 1, ctx: 200, capacity: 256, heads: 8, kvHeads: 8, headDim: 64, softcap: 3 },
    { seq: 37, ctx: 300, capacity: 320, heads: 8, kvHeads: 4, headDim: 32 },
    // past onnxruntime's query blocks of 256, soft-capped (the TS kernel, a block at a time)
    { seq: 300, ctx: 400, capacity: 416, heads: 4, kvHeads: 2, headDim: 16, softcap: 2 },
  ];
  for (const { capacity, ...c } of cases) {
    const s = { batch: 1, ...c };
    const q = rand(s.seq * s.heads * s.headDim, r);
    const k = rand(s.ctx * s.kvHeads * s.headDim, r);
    const v = rand(s.ctx * s.kvHeads * s.headDim, r);
    const want = ref.attention(q, k, v, s);
    const [kc, vc] = [rand(s.kvHeads * capacity * s.headDim, r), rand(s.kvHeads * capacity * s.headDim, r)];
    for (let j = 0; j < s.ctx; j++)
      for (let h = 0; h < s.kvHeads; h++)
        for (const [src, dst] of [
          [k, kc],
          [v, vc],
        ] as const)
          dst.set(src.subarray((j * s.kvHeads + h) * s.headDim, (j * s.kvHeads + h + 1) * s.headDim), (h * capacity + j) * s.headDim);
    const hm = { ...s, kvCapacity: capacity };
    const what = JSON.stringify(hm);
    assertClose(ref.attention(q, kc, vc, hm), want, 1e-12, `definition ${what}`);
    assertClose(attentionJs(q, kc, vc, hm), want, 1e-5, `TS ${what}`);
    // a decode step runs on the native kernel where it is built (not soft-capped), else onnxruntime's graph
    const native = nativeDecodeAttention(q, kc, vc, hm);
    if (nativeBuilt) assert.equal(native !== undefined, s.seq === 1 && !s.softcap, `native kernel takes ${what}`);
    if (native) assertClose(native, want, 1e-5, `native ${what}`);
    const half = nativeHalfKv(s);
    if (nativeBuilt) assert.equal(half !== undefined, !s.softcap, `float16 cache for ${what}`);
    if (half && s.seq === 1) {
      // stored as float16 (rounded to nearest even, as floatArrayToHalf), positions past ctx left as noise: the
      // attention is the definition's over the rounded keys and values
      const [kh, vh] = [new Uint16Array(kc.length), new Uint16Array(vc.length)].map((x) => x.map(() => r() * 65536)) as [
        Uint16Array,
        Uint16Array,
      ];
      half.store(k, kh, capacity, 0, s.ctx - 1);
      half.store(k.subarray((s.ctx - 1) * s.kvHeads * s.headDim), kh, capacity, s.ctx - 1, 1);
      half.store(v, vh, capacity, 0, s.ctx);
      const [kr, vr] = [floatArrayToHalf(k), floatArrayToHalf(v)];
      for (let j = 0; j < s.ctx; j++)
        for (let h = 0; h < s.kvHeads; h++) {
          const at = (h * capacity + j) * s.headDim;
          const from = (j * s.kvHeads + h) * s.headDim;
          assert.deepEqual(kh.subarray(at, at + s.headDim), kr.subarray(from, from + s.headDim), `float16 keys ${what}`);
          assert.deepEqual(vh.subarray(at, at + s.headDim), vr.subarray(from, from + s.headDim), `float16 values ${what}`);
        }
      const wantHalf = ref.attention(q, halfArrayToFloat(kr), halfArrayToFloat(vr), s);
      assertClose(half.attend(q, kh, vh, hm), wantHalf, 1e-5, `native float16 ${what}`);
    }
    useNativeKernel(false);
    try {
      assertClose(await ortBackend.attention(q, kc, vc, hm), want, 1e-5, `onnxruntime ${what}`);
    } finally {
      useNativeKernel(true);
    }
  }
});

test(
  "the native SwiGLU gating equals the definition's silu(g)·u within float32 rounding",
  { skip: !nativeBuilt && 'linux-x64 only' },
  () => {
    const n = nativeKernel();
    assert.ok(n, 'build/kernels.node is built and loads');
    const r = rng(11);
    // rows of 37 gate values (four vectors of 8 and a tail) then 37 up values; gates from -100 to 100 (exp's clamps),
    // zero, and small ones
    const [m, half] = [5, 37];
    const y = Float32Array.from({ length: m * 2 * half }, (_, i) => {
      const c = i % (2 * half);
      if (c >= half) return r() * 4;
      return [0, -100, 100, 1e-20, -90, 90][c] ?? r() * (c % 3 === 0 ? 40 : 8);
    });
    const out = new Float32Array(m * half);
    n.siluMul(y, m, half, out);
    for (let i = 0; i < m; i++) {
      const g = y.slice(i * 2 * half, i * 2 * half + half);
      const u = y.slice(i * 2 * half + half, (i + 1) * 2 * half);
      const want = ref.siluMul(g.slice(), u);
      for (let c = 0; c < half; c++) {
        const [got, w] = [out[i * half + c]!, want[c]!];
        if (!(Math.abs(got - w) <= 1e-6 * Math.abs(w) + 1e-30)) assert.fail(`row ${i} col ${c}: ${got} vs ${w} (g ${g[c]}, u ${u[c]})`);
      }
    }
  },
);

test('attention is causal: future keys do not change earlier outputs', () => {
  const r = rng(3);
  const s = { batch: 1, seq: 4, ctx: 4, heads: 2, kvHeads: 2, headDim: 4 };
  const q = rand(32, r);
  const k = rand(32, r);
  const v = rand(32, r);
  const k2 = k.slice();
  k2.fill(9, 24); // change the last position's keys
  const a = ref.attention(q, k, v, s);
  const b = ref.attention(q, k2, v, s);
  assert.deepEqual(a.subarray(0, 24), b.subarray(0, 24));
  assert.notDeepEqual(a.subarray(24), b.subarray(24));
});

test('headStats (NLL, KL, top-1) equals the definition', async () => {
  const r = rng(4);
  for (const [m, d, vocab] of [
    [1, 1, 2],
    [5, 7, 11],
    [31, 64, 1000],
  ] as [number, number, number][]) {
    const h = rand(m * d, r).map((x) => 4 * x);
    const w = rand(vocab * d, r);
    const hr = h.map((x) => x + 0.3 * r());
    const targets = Int32Array.from({ length: m }, (_, i) => (i * 7919) % vocab);
    const want = ref.headStats(h, floatRows(w), m, d, vocab, targets, { ref: { h: hr, w: floatRows(w) } });
    // whole, and in slices of 3 rows (m > 3: of m rows) so every join across slices is exercised
    for (const sliceFloats of [undefined, 3 * d]) {
      const got = await ortBackend.headStats(h, floatRows(w), m, d, vocab, targets, { ref: { h: hr, w: floatRows(w) }, sliceFloats });
      assertClose(got.nll, want.nll, 1e-5, `nll, slices of ${sliceFloats} floats`);
      assertClose(got.kl!, want.kl!, 1e-5, `kl, slices of ${sliceFloats} floats`);
      assert.deepEqual(got.agree, want.agree);
      const alone = await ortBackend.headStats(h, floatRows(w), m, d, vocab, targets, { sliceFloats });
      assertClose(alone.nll, want.nll, 1e-5, 'nll without ref');
    }
  }
});

test('headStats of 16-bit heads (F16, BF16) read in slices equals the definition on the widened head', async () => {
  const r = rng(5);
  const [m, d, vocab] = [9, 48, 700];
  const h = rand(m * d, r).map((x) => 4 * x);
  const hr = h.map((x) => x + 0.3 * r());
  const w = rand(vocab * d, r);
  const targets = Int32Array.from({ length: m }, (_, i) => (i * 311) % vocab);
  const bf16 = Uint16Array.from(new Uint32Array(w.buffer), (b) => b >>> 16);
  for (const head of [
    { dtype: 'F16', data: floatArrayToHalf(w) },
    { dtype: 'BF16', data: bf16 },
  ] as StoredRows[]) {
    const wide = floatRows(rowsF32(head, 0, vocab, d));
    const want = ref.headStats(h, wide, m, d, vocab, targets, { ref: { h: hr, w: wide } });
    // 100 rows a slice: seven slices, the last one short
    const got = await ortBackend.headStats(h, head, m, d, vocab, targets, { ref: { h: hr, w: head }, sliceFloats: 100 * d });
    assertClose(got.nll, want.nll, 1e-5, `${head.dtype} nll`);
    assertClose(got.kl!, want.kl!, 1e-5, `${head.dtype} kl`);
    assert.deepEqual(got.agree, want.agree);
  }
});

test('reference NLL is a proper cross-entropy: uniform logits give log(vocab)', () => {
  const st = ref.headStats(new Float32Array(3), floatRows(new Float32Array(5 * 3)), 1, 3, 5, Int32Array.from([2]));
  assert.ok(Math.abs(st.nll[0]! - Math.log(5)) < 1e-6);
});
