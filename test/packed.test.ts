import assert from 'node:assert/strict';
import { test } from 'node:test';
import { packedWeights, packLayer, stackPackedRows } from '../src/formats/gptq-pack.js';
import { dequantize, numGroups, type QuantizedLayer } from '../src/quant/quantized-layer.js';
import type { ActivationPrecision, ResidualMlpWeights } from '../src/tensor/backend.js';
import { ortBackend } from '../src/tensor/ort.js';
import { nbitsLayout } from '../src/tensor/ort-linear.js';
import { nativeKernel, nativeLinear } from '../src/tensor/native.js';
import { readFile } from 'node:fs/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { matmulNT, packedMatmul, refBackend, residualMlpSteps, siluMul } from '../src/tensor/ref.js';
import { seededRandom } from '../src/calib/windows.js';
import { floatToHalf, halfToFloat } from '../src/io/fp16.js';
import { join } from 'node:path';
import { calibrationWindows } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { evaluate, referenceStates } from '../src/eval/perplexity.js';
import { writeGptqCheckpoint } from '../src/formats/gptq.js';
import { pullStories15m } from '../src/io/stories.js';
import { Decoder, preparedBytes, type LinearName } from '../src/models/index.js';
import { loadTokenizer } from '../src/models/load.js';
import { quantizeModel, QUANTIZE_REFERENCE } from '../src/quant/quantize-model.js';
import { getBackend } from '../src/tensor/index.js';
import { tempDir } from './helpers/temp.js';

/*
 * Packed kernels against dequantize-then-matmul. Tolerances:
 * - the plain-TS packed definition accumulates in float64: equal to the float64 product of the dequantized
 *   matrix up to 1e-6 relative;
 * - onnxruntime with float32 activations: float32 accumulation over K terms, |err| <= 4·K·2⁻²⁴·Σ_c|W_rc·x_c|;
 * - with int8 activations each block of x is rounded to 1/254 of its largest magnitude, so
 *   |err| <= Σ_c |W_rc|·max|x_block(c)|/254 (+ the float32 term).
 */

function randomLayer(rows: number, cols: number, bits: number, groupSize: number, actOrder: boolean, seed: number): QuantizedLayer {
  const rnd = seededRandom(seed);
  const q: Pick<QuantizedLayer, 'cols' | 'groupSize'> = { cols, groupSize };
  const G = numGroups(q);
  const maxq = (1 << bits) - 1;
  const perm = Array.from({ length: cols }, (_, c) => c);
  for (let i = cols - 1; actOrder && i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  const gIdx = new Int32Array(cols);
  perm.forEach((c, i) => (gIdx[c] = groupSize > 0 ? Math.floor(i / groupSize) : 0));
  return {
    rows,
    cols,
    bits,
    groupSize,
    sym: false,
    codes: Uint8Array.from({ length: rows * cols }, () => Math.floor(rnd() * (maxq + 1))),
    // scales as a checkpoint holds them: fp16 values
    scales: Float32Array.from({ length: rows * G }, () => halfToFloat(floatToHalf(0.001 + rnd() * 0.05))),
    zeros: Int32Array.from({ length: rows * G }, () => Math.floor(rnd() * (maxq + 1))),
    gIdx,
  };
}

function check(q: QuantizedLayer, m: number, activations: ActivationPrecision, got: Float32Array, x: Float32Array, what: string): void {
  const w = dequantize(q);
  const want = matmulNT(x, w, m, q.rows, q.cols);
  const blockSize = nbitsLayout(q.gIdx)?.blockSize ?? q.cols;
  const order = Array.from(q.gIdx, (_, c) => c).sort((a, b) => q.gIdx[a]! - q.gIdx[b]! || a - b);
  for (let i = 0; i < m; i++) {
    // largest |x| of the int8 block each column falls in, in the kernel's column order
    const blockMax = new Float64Array(q.cols);
    for (let b = 0; b < q.cols; b += blockSize) {
      const cs = order.slice(b, b + blockSize);
      const mx = Math.max(...cs.map((c) => Math.abs(x[i * q.cols + c]!)));
      for (const c of cs) blockMax[c] = mx;
    }
    for (let r = 0; r < q.rows; r++) {
      let absSum = 0;
      let int8 = 0;
      for (let c = 0; c < q.cols; c++) {
        const wc = Math.abs(w[r * q.cols + c]!);
        absSum += wc * Math.abs(x[i * q.cols + c]!);
        int8 += (wc * blockMax[c]!) / 254;
      }
      const tol = 4 * q.cols * 2 ** -24 * absSum + (activations === 'int8' ? int8 : 0) + 1e-12;
      const err = Math.abs(got[i * q.rows + r]! - want[i * q.rows + r]!);
      assert.ok(err <= tol, `${what}: y[${i},${r}] = ${got[i * q.rows + r]} vs ${want[i * q.rows + r]} (err ${err}, tol ${tol})`);
    }
  }
}

const CASES: { bits: number; groupSize: number; actOrder: boolean }[] = [];
for (const bits of [2, 3, 4, 8]) {
  for (const groupSize of [-1, 32, 128])
    for (const actOrder of groupSize > 0 ? [false, true] : [false]) CASES.push({ bits, groupSize, actOrder });
}

test('plain-TS packed matmul equals dequantize-then-matmul on every bit width, group size and act-order', () => {
  for (const { bits, groupSize, actOrder } of CASES) {
    const q = randomLayer(64, 288, bits, groupSize, actOrder, bits * 1000 + groupSize + (actOrder ? 7 : 0));
    const rnd = seededRandom(5);
    const x = Float32Array.from({ length: 3 * 288 }, () => rnd() - 0.5);
    const got = packedMatmul(packedWeights(packLayer(q, 'gptq_v2'), q, 'gptq_v2'), x, 3);
    const want = matmulNT(x, dequantize(q), 3, 64, 288);
    for (let i = 0; i < want.length; i++)
      assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-6 * (1 + Math.abs(want[i]!)), `w${bits} g${groupSize}`);
  }
});

for (const activations of ['fp32', 'int8'] as const) {
  test(`onnxruntime packed kernels (${activations} activations) equal dequantize-then-matmul within the stated bound`, async () => {
    for (const { bits, groupSize, actOrder } of CASES) {
      for (const [rows, cols] of [
        [64, 288],
        [96, 64],
      ] as const) {
        const q = randomLayer(rows, cols, bits, Math.min(groupSize, cols), actOrder, rows + bits * 31 + groupSize);
        assert.ok(nbitsLayout(q.gIdx), 'runs on MatMulNBits, not the fallback');
        const k = await ortBackend.packedLinear(packedWeights(packLayer(q, 'gptq'), q, 'gptq'), activations);
        for (const m of [1, 5]) {
          const rnd = seededRandom(m);
          const x = Float32Array.from({ length: m * cols }, () => rnd() - 0.5);
          check(q, m, activations, await k.apply(x, m), x, `w${bits} g${groupSize}${actOrder ? ' act-order' : ''} ${rows}x${cols} m=${m}`);
        }
      }
    }
  });
}

/*
 * The native 4- and 8-bit kernels (src/tensor/native/kernels.c): the same bound as onnxruntime's int8 path, on both
 * of their instruction sets where the CPU has them, for batch sizes that take each of the 1-4-row inner loops and
 * more than one pass of them, per-channel and grouped, act-order or not. On linux-x64 `npm run build` builds it, so there it
 * must be present; elsewhere there is no kernel to test.
 */
const nativeBuilt = process.platform === 'linux' && process.arch === 'x64';
test(
  'native 4- and 8-bit kernels equal dequantize-then-matmul within the int8 bound, on AVX-512 VNNI and AVX2',
  { skip: !nativeBuilt && 'the native kernel is built on linux-x64 only' },
  async () => {
    const k = nativeKernel();
    assert.ok(k, 'build/kernels.node is built (npm run build) and loads');
    const cpu = await readFile('/proc/cpuinfo', 'utf8');
    const sets = ['avx512vnni', 'avx2'].filter((s) => new RegExp(`\\b${s === 'avx512vnni' ? 'avx512_vnni' : s}\\b`).test(cpu));
    assert.ok(sets.includes(k.isa()), `in use: ${k.isa()}`);
    const initial = k.isa();
    try {
      for (const isa of sets) {
        k.useIsa(isa);
        for (const { groupSize, actOrder, rows, cols } of [
          { groupSize: -1, actOrder: false, rows: 40, cols: 384 },
          { groupSize: 128, actOrder: false, rows: 24, cols: 256 },
          { groupSize: 256, actOrder: true, rows: 64, cols: 512 },
          { groupSize: 128, actOrder: true, rows: 8, cols: 384 },
          // blocks of 32, 64 and 16 columns (the largest power of two every group start is a multiple of)
          { groupSize: 32, actOrder: false, rows: 24, cols: 256 },
          { groupSize: 64, actOrder: true, rows: 16, cols: 192 },
          { groupSize: 48, actOrder: false, rows: 16, cols: 96 },
        ]) {
          // scales as a checkpoint's (float16 values: the kernel keeps them in 16 bits) or scaled off float16's grid
          // (kept float32); zero points per block, or all 8 (symmetric: one for the layer)
          for (const [half, sym] of [
            [true, false],
            [false, false],
            [true, true],
          ]) {
            for (const bits of [4, 8]) {
              const q = randomLayer(rows, cols, bits, groupSize, actOrder, rows + cols + groupSize + bits);
              if (sym) q.zeros.fill(1 << (bits - 1));
              const p = packedWeights(packLayer(q, 'gptq'), q, 'gptq');
              if (!half) for (const scales of [q.scales, p.scales]) scales.forEach((v, i) => (scales[i] = v * (1 + 2 ** -20)));
              const kernel = nativeLinear(p);
              const what = `${isa} w${bits} g${groupSize}${actOrder ? ' act-order' : ''} ${rows}x${cols} ${half ? 'float16' : 'float32'} scales${sym ? ', one zero point' : ''}`;
              assert.ok(kernel, `${what} runs natively`);
              const block = groupSize > 0 ? Math.min(128, groupSize & -groupSize) : 128;
              const slots = Math.ceil(rows / 16) * 16 * (cols / block);
              assert.equal(
                kernel.weightBytes,
                slots * ((block * bits) / 8 + (half ? 2 : 4) + (sym ? 0 : 1)) + (actOrder ? cols * 4 : 0),
                `${what}: bytes`,
              );
              for (const m of [1, 2, 3, 4, 5, 9]) {
                const rnd = seededRandom(m + rows);
                // one row all zeros: its blocks have no scale
                const x = Float32Array.from({ length: m * cols }, (_, i) => (m === 3 && i < cols ? 0 : rnd() - 0.5));
                check(q, m, 'int8', await kernel.apply(x, m), x, `${what} m=${m}`);
              }
              await kernel.dispose();
            }
          }
        }
      }
    } finally {
      k.useIsa(initial);
    }
    // its own layout only: 3 and 2 bits, groups that start off multiples of 16 columns
    for (const [bits, groupSize] of [
      [3, 128],
      [2, 128],
      [4, 8],
    ] as const) {
      const q = randomLayer(32, 256, bits, groupSize, false, 1);
      assert.equal(nativeLinear(packedWeights(packLayer(q, 'gptq'), q, 'gptq')), undefined, `w${bits} g${groupSize}`);
    }
  },
);

test(
  'a block tail on the native kernel keeps its kernels, not the packed layers it was made from',
  { skip: !nativeBuilt && 'linux-x64 only' },
  async () => {
    // (a closure over those layers held a 7B model's 2.7 GB of qweight words beside the kernels' own copies)
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const layer = (rows: number, cols: number, seed: number) => {
      const q = randomLayer(rows, cols, 4, 128, false, seed);
      return packedWeights(packLayer(q, 'gptq'), q, 'gptq');
    };
    let w: ResidualMlpWeights | undefined = {
      o: layer(128, 128, 1),
      gateUp: layer(512, 128, 2),
      down: layer(128, 256, 3),
      norm: new Float32Array(128).fill(1),
      eps: 1e-5,
    };
    const words = new WeakRef(w.gateUp.qweight);
    const tail = (await ortBackend.packedResidualMlp(w, 'int8'))!;
    w = undefined;
    for (let i = 0; i < 3 && words.deref(); i++) {
      await new Promise((r) => setImmediate(r));
      gc();
    }
    assert.equal(words.deref(), undefined, 'the qweight words are collected');
    const y = await tail.apply(new Float32Array(128).fill(0.5), new Float32Array(128).fill(0.25), 1);
    assert.ok(y.every(Number.isFinite));
    await tail.dispose();
  },
);

/*
 * The fused block tail (o_proj + residual, RMSNorm, gated gate/up, down_proj + residual in one graph) against its
 * definition, the same steps one kernel at a time (residualMlpSteps): on onnxruntime's own per-layer kernels the
 * products are the same operators, so only the norm's and adds' float32 rounding may differ (1e-5 of the largest
 * output); against the plain-TS steps (float64 accumulation) the float32 products' error bound of `check` above,
 * carried through two layers, stays under 1e-4 of the largest output at these sizes.
 */
test('fused block tail equals its steps one kernel at a time, on onnxruntime and in plain TypeScript', async () => {
  const D = 64;
  const F = 96;
  for (const { bits, groupSize, actOrder } of [
    { bits: 4, groupSize: 32, actOrder: false },
    { bits: 3, groupSize: 32, actOrder: true },
    { bits: 8, groupSize: -1, actOrder: false },
  ]) {
    const layer = (rows: number, cols: number, seed: number) => {
      const q = randomLayer(rows, cols, bits, groupSize, actOrder, seed);
      return packedWeights(packLayer(q, 'gptq'), q, 'gptq');
    };
    const rnd = seededRandom(bits);
    const w = {
      o: layer(D, D, 1),
      gateUp: layer(2 * F, D, 2),
      down: layer(D, F, 3),
      norm: Float32Array.from({ length: D }, () => 0.5 + rnd()),
      eps: 1e-5,
    };
    for (const activations of ['fp32', 'int8'] as const) {
      const fused = (await ortBackend.packedResidualMlp(w, activations))!;
      assert.ok(fused, 'every layer has a MatMulNBits layout');
      const steps = await residualMlpSteps(ortBackend, w, activations);
      const plain = await residualMlpSteps(refBackend, w, activations);
      for (const m of [1, 5]) {
        const x = Float32Array.from({ length: m * D }, () => rnd() - 0.5);
        const att = Float32Array.from({ length: m * D }, () => rnd() - 0.5);
        const got = await fused.apply(x, att, m);
        const want = await steps.apply(x, att, m);
        const scale = Math.max(...want.map(Math.abs));
        const what = `w${bits} g${groupSize}${actOrder ? ' act-order' : ''} ${activations} m=${m}`;
        const worst = (ref: Float32Array): number => Math.max(...got.map((v, i) => Math.abs(v - ref[i]!)));
        assert.ok(worst(want) <= 1e-5 * scale, `${what}: fused vs onnxruntime steps, max error ${worst(want)} of ${scale}`);
        if (activations === 'fp32') {
          const exact = await plain.apply(x, att, m);
          assert.ok(worst(exact) <= 1e-4 * scale, `${what}: fused vs plain-TS steps, max error ${worst(exact)} of ${scale}`);
        }
      }
      await Promise.all([fused.dispose(), steps.dispose()]);
    }
  }
});

test('layers sharing an input stack into one packed layer only when their bits, groups and g_idx agree', () => {
  for (const bits of [2, 3, 4, 8]) {
    const parts = [64, 32, 32].map((rows, i) => randomLayer(rows, 128, bits, 32, false, 40 + i));
    const packed = parts.map((q) => packedWeights(packLayer(q, 'gptq_v2'), q, 'gptq_v2'));
    const stacked = stackPackedRows(packed)!;
    assert.equal(stacked.rows, 128);
    const x = Float32Array.from({ length: 2 * 128 }, (_, i) => Math.cos(i));
    const y = packedMatmul(stacked, x, 2);
    const ys = packed.map((p) => packedMatmul(p, x, 2));
    for (let m = 0; m < 2; m++) {
      assert.deepEqual(
        Array.from(y.subarray(m * 128, (m + 1) * 128)),
        [...ys[0]!.subarray(m * 64, (m + 1) * 64), ...ys[1]!.subarray(m * 32, (m + 1) * 32), ...ys[2]!.subarray(m * 32, (m + 1) * 32)],
        `w${bits}`,
      );
    }
  }
  const a = randomLayer(32, 128, 4, 32, true, 1);
  const b = randomLayer(32, 128, 4, 32, true, 2); // another act-order permutation
  const pk = (q: QuantizedLayer) => packedWeights(packLayer(q, 'gptq_v2'), q, 'gptq_v2');
  assert.equal(stackPackedRows([pk(a), pk(b)]), undefined);
  assert.equal(stackPackedRows([pk(a), pk(randomLayer(32, 128, 3, 32, false, 3))]), undefined);
});

test('a stacked [gate; up] kernel with a gated output returns silu(gate) ⊙ up of its product: float and packed, onnxruntime, fallback and reference', async () => {
  const rnd = seededRandom(11);
  const [rows, cols] = [128, 96];
  const w = Float32Array.from({ length: rows * cols }, () => rnd() - 0.5);
  const onMatMulNBits = randomLayer(rows, cols, 4, 32, false, 12);
  const onFallback = randomLayer(rows, cols, 4, 24, false, 13);
  const packed = (q: QuantizedLayer) => packedWeights(packLayer(q, 'gptq_v2'), q, 'gptq_v2');
  const kernels = {
    'float, onnxruntime': [await ortBackend.floatLinear(w, rows, cols), await ortBackend.floatLinear(w, rows, cols, { gated: 'silu' })],
    'float, reference': [await refBackend.floatLinear(w, rows, cols), await refBackend.floatLinear(w, rows, cols, { gated: 'silu' })],
    'packed, MatMulNBits': [
      await ortBackend.packedLinear(packed(onMatMulNBits), 'fp32'),
      await ortBackend.packedLinear(packed(onMatMulNBits), 'fp32', { gated: 'silu' }),
    ],
    'packed, plain-TS fallback': [
      await ortBackend.packedLinear(packed(onFallback), 'fp32'),
      await ortBackend.packedLinear(packed(onFallback), 'fp32', { gated: 'silu' }),
    ],
  };
  const h = rows / 2;
  for (const [what, [plain, gated]] of Object.entries(kernels)) {
    assert.equal(gated!.gated, 'silu', what);
    assert.equal(plain!.gated, undefined, what);
    for (const m of [1, 3]) {
      const x = Float32Array.from({ length: m * cols }, () => rnd() - 0.5);
      const y = await plain!.apply(x, m);
      const g = new Float32Array(m * h);
      const u = new Float32Array(m * h);
      for (let r = 0; r < m; r++) {
        g.set(y.subarray(r * rows, r * rows + h), r * h);
        u.set(y.subarray(r * rows + h, (r + 1) * rows), r * h);
      }
      const want = siluMul(g, u);
      const got = await gated!.apply(x, m);
      assert.equal(got.length, m * h, what);
      for (let i = 0; i < want.length; i++)
        assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-6 * (1 + Math.abs(want[i]!)), `${what} m=${m} [${i}]`);
    }
  }
});

test('groups that are not multiples of 16 columns still compute exactly (plain-TS fallback)', async () => {
  const q = randomLayer(32, 96, 4, 24, false, 3);
  assert.equal(nbitsLayout(q.gIdx), undefined);
  const k = await ortBackend.packedLinear(packedWeights(packLayer(q, 'gptq_v2'), q, 'gptq_v2'), 'fp32');
  const x = Float32Array.from({ length: 96 }, (_, i) => Math.sin(i));
  check(q, 1, 'fp32', await k.apply(x, 1), x, 'g24');
  // a group of 48 columns starts on multiples of 16: blocks of 16
  assert.equal(nbitsLayout(randomLayer(32, 96, 4, 48, true, 4).gIdx)?.blockSize, 16);
});

test('library: a packed stories15M checkpoint loads onto packed kernels and generates what its dequantized weights generate', async () => {
  const dir = await pullStories15m();
  const tokenizer = loadTokenizer(dir);
  const windows = calibrationWindows(tokenizer.encode((await loadText('sotu-calib')).slice(0, 100_000)), 4, 256, 0);
  const opts = { ...QUANTIZE_REFERENCE, bits: 3, groupSize: 128, actOrder: true };
  const { layers } = await quantizeModel(dir, await getBackend(), opts, { windows, seqlen: 256 });
  const out = join(tempDir('packed-'), 'w3');
  // asymmetric, so the v2 format (v1 holds symmetric grids only)
  await writeGptqCheckpoint(dir, out, layers, { format: 'gptq_v2', floatDtype: 'F32', maxShardBytes: 2 ** 40, quant: opts });

  const lib = await import('../src/index.js');
  const packed = (await lib.loadModel(out)).model;
  // stacked q/k/v and gate/up (act-order shares one column order per group); 3-bit codes in 4-bit slots, 288
  // columns padded to 3 blocks of 128, a float32 scale and a 4-bit zero per block: under a quarter of float32
  // (Llama's plain pre-norm block: o_proj, the norm, gate/up and down_proj as one fused kernel)
  const block = packed.blocks[0]!;
  assert.equal(block.qkv.length, 1);
  assert.ok(block.tail && !block.gateUp);
  const kernelBytes = packed.blocks.reduce((s, b) => s + preparedBytes(b), 0);
  const floatBytes = [...layers.values()].reduce((s, q) => s + 4 * q.rows * q.cols, 0);
  assert.ok(kernelBytes < floatBytes / 4, `packed kernels hold ${kernelBytes} bytes vs ${floatBytes} as float32`);

  const fp = await Decoder.load(dir, await getBackend());
  const blocks = fp.blocks.map((b, l) => ({
    ...b,
    linear: Object.fromEntries(Object.keys(b.linear).map((n) => [n, dequantize(layers.get(`model.layers.${l}.${n}.weight`)!)])) as Record<
      LinearName,
      Float32Array
    >,
  }));
  const dequantized = new Decoder(fp.cfg, fp.backend, fp.outer, blocks);
  const prompt = tokenizer.encode('Once upon a time');
  const want = (await lib.generate(dequantized, prompt, { maxTokens: 32 })).tokens;
  assert.deepEqual((await lib.generate(packed, prompt, { maxTokens: 32 })).tokens, want);
  // int8 activations: a different rounding of the same model. Free-running greedy text parts ways at its first
  // near-tie (a change of float32 summation order in the calibration's forward moved that into the first 8
  // tokens), so the two are compared position by position on real text instead
  const int8 = (await lib.loadModel(out, { activations: 'int8' })).model;
  const text = tokenizer.encode(await loadText('sotu-test')).slice(0, 4 * 64);
  const shape = { windows: 4, seqlen: 64 };
  const int8Gap = await evaluate(int8, text, { ...shape, ref: await referenceStates(dequantized, text, shape) });
  const w3Gap = await evaluate(dequantized, text, { ...shape, ref: await referenceStates(fp, text, shape) });
  // measured: KL 0.0117 and top-1 0.913 against the 3-bit weights' own KL of 1.008 from float32
  assert.ok(
    int8Gap.kl! < w3Gap.kl! / 20 && int8Gap.top1! > 0.85,
    `int8 against its dequantized weights: KL ${int8Gap.kl}, top-1 ${int8Gap.top1}; the weights against float32: KL ${w3Gap.kl}`,
  );
});
