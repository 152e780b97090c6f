import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { calibrationWindows, seededRandom } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { evaluate, referenceStates } from '../src/eval/perplexity.js';
import { packedWeights, packLayer } from '../src/formats/gptq-pack.js';
import { writeGptqCheckpoint } from '../src/formats/gptq.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { quantizeModel, QUANTIZE_REFERENCE } from '../src/quant/quantize-model.js';
import { streamValue } from '../src/tensor/bit-stream.js';
import { getBackend } from '../src/tensor/index.js';
import { matvec4Layout, openMatvec4 } from '../src/tensor/matvec4.js';
import { ortBackend } from '../src/tensor/ort.js';
import { packedMatmulInt8, rmsNorm, siluMul } from '../src/tensor/ref.js';
import type { PackedLinearWeights } from '../src/tensor/backend.js';
import { check, randomLayer } from './helpers/packed-layers.js';
import { tempDir } from './helpers/temp.js';

/*
 * The batch-1 4-bit kernel (tensor/matvec4.ts) against its definition, ref.ts's packedMatmulInt8: the same int8
 * activations, the products summed in float64. The kernel's integer dot of a block is exact; what it rounds is
 * float32: s·xs, the product with the block's dot, m = s·zero, cx = xs·Σ xq, and the sums of those over blocks.
 * So |err| <= 8·(blocks + 4)·2⁻²⁴·T, T = Σ over blocks of |s·xs·dot| + |s·zero·cx|, computed here from the codes.
 */
function floatBound(p: PackedLinearWeights, x: Float32Array, blockSize: number, order: Int32Array | undefined, r: number): number {
  const { rows, cols, qweight, qzeros, scales, gIdx } = p;
  const blocks = Math.ceil(cols / blockSize);
  let max = 0;
  let T = 0;
  for (let b = 0; b < blocks; b++) {
    const cs = Array.from({ length: Math.min(blockSize, cols - b * blockSize) }, (_, i) =>
      order ? order[b * blockSize + i]! : b * blockSize + i,
    );
    max = Math.max(...cs.map((c) => Math.abs(x[c]!)));
    const xs = max / 127;
    const g = gIdx[cs[0]!]!;
    const s = scales[g * rows + r]!;
    const zero = streamValue((w) => qzeros[(g * rows) / 8 + w]!, r, 4);
    let dot = 0;
    let sum = 0;
    for (const c of cs) {
      const xq = xs === 0 ? 0 : Math.round(x[c]! / xs);
      dot += streamValue((w) => qweight[w * rows + r]!, c, 4) * xq;
      sum += xq;
    }
    T += Math.abs(s * xs * dot) + Math.abs(s * zero * xs * sum);
  }
  return 8 * (blocks + 4) * 2 ** -24 * T;
}

const SHAPES: [number, number][] = [
  [64, 288],
  [40, 4096],
  [96, 64],
];

test('the batch-1 4-bit kernel equals its float64 definition within float32 rounding, and dequantize-then-matmul within the int8 bound', async () => {
  for (const groupSize of [-1, 32, 128]) {
    for (const actOrder of groupSize > 0 ? [false, true] : [false]) {
      for (const [rows, cols] of SHAPES) {
        const q = randomLayer(rows, cols, 4, Math.min(groupSize, cols), actOrder, rows + cols + groupSize);
        const p = packedWeights(packLayer(q, 'gptq_v2'), q, 'gptq_v2');
        const layout = matvec4Layout(p);
        assert.ok(layout, 'the kernel takes every 4-bit layer whose columns are runs of 32');
        const k = openMatvec4(p)!;
        const what = `g${groupSize}${actOrder ? ' act-order' : ''} ${rows}x${cols}`;
        for (const m of [1, 3]) {
          const rnd = seededRandom(m + cols);
          const x = Float32Array.from({ length: m * cols }, () => rnd() - 0.5);
          const got = await k.apply(x, m);
          const want = packedMatmulInt8(p, x, m, layout.blockSize, layout.order);
          for (let i = 0; i < m; i++) {
            const xi = x.subarray(i * cols, (i + 1) * cols);
            for (let r = 0; r < rows; r++) {
              const [g, w] = [got[i * rows + r]!, want[i * rows + r]!];
              const tol = floatBound(p, xi, layout.blockSize, layout.order, r);
              assert.ok(Math.abs(g - w) <= tol, `${what} m=${m}: y[${i},${r}] = ${g} vs ${w} (tol ${tol})`);
            }
          }
          check(q, m, 'int8', got, x, what);
        }
        await k.dispose();
      }
    }
  }
});

test('the batch-1 kernel runs only 4-bit layers in whole runs of 32 columns; the backend takes it for one-row int8 use only', async () => {
  const pk = (bits: number, cols: number, groupSize: number): PackedLinearWeights => {
    const q = randomLayer(32, cols, bits, groupSize, false, bits + cols);
    return packedWeights(packLayer(q, 'gptq_v2'), q, 'gptq_v2');
  };
  for (const bits of [2, 3, 8]) assert.equal(matvec4Layout(pk(bits, 128, 32)), undefined, `${bits}-bit`);
  assert.equal(matvec4Layout(pk(4, 80, -1)), undefined, '80 columns');
  assert.equal(matvec4Layout(pk(4, 96, 48)), undefined, 'groups of 48 (blocks of 16)');

  const p = pk(4, 256, 64);
  const rnd = seededRandom(3);
  const x = Float32Array.from({ length: 256 }, () => rnd() - 0.5);
  const own = await openMatvec4(p)!.apply(x, 1);
  // deterministic: the backend's one-row int8 layer is this kernel, bit for bit; with fp32 activations it is not
  assert.deepEqual(await (await ortBackend.packedLinear(p, 'int8', { oneRow: true })).apply(x, 1), own);
  const fp32 = await (await ortBackend.packedLinear(p, 'fp32', { oneRow: true })).apply(x, 1);
  assert.notDeepEqual(fp32, own);
  check(randomLayer(32, 256, 4, 64, false, 4 + 256), 1, 'fp32', fp32, x, 'fp32 activations');
});

test('a one-row block tail on the batch-1 kernel is its steps on the int8 definition: o_proj + residual, RMSNorm, silu(gate) ⊙ up, down_proj + residual', async () => {
  const D = 128;
  const F = 192;
  const layer = (rows: number, cols: number, seed: number): PackedLinearWeights => {
    const q = randomLayer(rows, cols, 4, 64, true, seed);
    return packedWeights(packLayer(q, 'gptq_v2'), q, 'gptq_v2');
  };
  const rnd = seededRandom(9);
  const w = {
    o: layer(D, D, 1),
    gateUp: layer(2 * F, D, 2),
    down: layer(D, F, 3),
    norm: Float32Array.from({ length: D }, () => 0.5 + rnd()),
    eps: 1e-5,
  };
  const tail = (await ortBackend.packedResidualMlp(w, 'int8', { oneRow: true }))!;
  const int8 = (p: PackedLinearWeights, x: Float32Array): Float32Array => {
    const { blockSize, order } = matvec4Layout(p)!;
    return packedMatmulInt8(p, x, 1, blockSize, order);
  };
  for (const m of [1, 2]) {
    const x = Float32Array.from({ length: m * D }, () => rnd() - 0.5);
    const att = Float32Array.from({ length: m * D }, () => rnd() - 0.5);
    const got = await tail.apply(x, att, m);
    for (let i = 0; i < m; i++) {
      const row = (a: Float32Array, n: number): Float32Array => a.subarray(i * n, (i + 1) * n);
      const x1 = int8(w.o, row(att, D)).map((v, j) => row(x, D)[j]! + v);
      const gu = int8(w.gateUp, rmsNorm(x1, w.norm, 1, w.eps));
      const y = int8(w.down, siluMul(gu.slice(0, F), gu.slice(F))).map((v, j) => x1[j]! + v);
      // float32 against float64 sums (the per-layer bound above; measured 1.7-1.9e-7 of the largest output), with
      // room for an activation near a rounding boundary of its int8 block to round the other way
      const scale = Math.max(...y.map(Math.abs));
      const worst = Math.max(...row(got, D).map((v, j) => Math.abs(v - y[j]!)));
      assert.ok(worst <= 1e-5 * scale, `m=${m} row ${i}: max error ${worst} of ${scale}`);
    }
  }
});

test('library: a 4-bit stories15M checkpoint loaded for generation runs on the batch-1 kernel, as close to its weights as onnxruntime int8', async () => {
  const dir = await pullStories15m();
  const tokenizer = loadTokenizer(dir);
  const opts = { ...QUANTIZE_REFERENCE, method: 'rtn' as const, bits: 4, groupSize: 128 };
  // round-to-nearest reads no calibration text, but the pipeline wants a window
  const windows = calibrationWindows(tokenizer.encode((await loadText('sotu-calib')).slice(0, 10_000)), 1, 64, 0);
  const { layers } = await quantizeModel(dir, await getBackend(), opts, { windows, seqlen: 64 });
  const out = join(tempDir('matvec4-'), 'w4');
  await writeGptqCheckpoint(dir, out, layers, { format: 'gptq_v2', floatDtype: 'F32', maxShardBytes: 2 ** 40, quant: opts });

  const gen = (await loadModel(out, { activations: 'int8', use: 'generate' })).model;
  const onnx = (await loadModel(out, { activations: 'int8' })).model;
  const exact = (await loadModel(out)).model;
  // the generate load's layers are the batch-1 kernel's (its weight bytes: codes, scale and m per group, block groups)
  const qkv = gen.blocks[0]!.qkv[0]!;
  assert.equal(qkv.weightBytes, (qkv.rows * qkv.cols) / 2 + qkv.rows * 3 * 8 + 3 * 4);
  assert.notEqual(onnx.blocks[0]!.qkv[0]!.weightBytes, qkv.weightBytes);

  const text = tokenizer.encode(await loadText('sotu-test')).slice(0, 2 * 64);
  const shape = { windows: 2, seqlen: 64 };
  const ref = await referenceStates(exact, text, shape);
  const [g, o] = [await evaluate(gen, text, { ...shape, ref }), await evaluate(onnx, text, { ...shape, ref })];
  // measured: KL 0.0126 and top-1 0.929 against onnxruntime int8's 0.0122 and 0.937
  assert.ok(
    g.kl! < 2 * o.kl! + 1e-3 && g.top1! > 0.9,
    `batch-1 kernel: KL ${g.kl}, top-1 ${g.top1}; onnxruntime int8: KL ${o.kl}, top-1 ${o.top1}`,
  );
});
