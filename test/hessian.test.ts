import assert from 'node:assert/strict';
import { test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import { HessianAccumulator } from '../src/quant/hessian.js';
import { ortBackend } from '../src/tensor/ort.js';
import { refBackend } from '../src/tensor/ref.js';

/*
 * H = 2/n·Σ x·xᵀ streamed in batches equals the one-shot float64 definition (float32 products: 1e-5 of the
 * largest entry), whether the batches are held and multiplied as one or each folded in as it comes, and
 * non-finite activations are refused naming their row among all the layer's inputs.
 */
test('streamed Hessian equals 2/n·Σ xxᵀ; NaN/Inf activations are refused by row', async () => {
  const rnd = seededRandom(5);
  const cols = 600; // the onnxruntime backend's eight column panels, 7·64 + 152: its blocks mirrored into the lower half
  const batches = [3, 5].map((seqs) => ({ seqs, rows: seqs * 7, x: Float32Array.from({ length: seqs * 7 * cols }, () => rnd() - 0.5) }));
  const n = batches.reduce((s, b) => s + b.seqs, 0);
  const want = new Float64Array(cols * cols);
  for (const { rows, x } of batches)
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < cols; i++) for (let j = 0; j < cols; j++) want[i * cols + j]! += (2 / n) * x[r * cols + i]! * x[r * cols + j]!;
  const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  for (const backend of [refBackend, ortBackend]) {
    for (const foldEach of [false, true]) {
      const acc = new HessianAccumulator(cols, backend);
      for (const { seqs, rows, x } of batches) {
        await acc.add(x, rows, seqs);
        if (foldEach) await acc.flush();
      }
      if (!foldEach) assert.throws(() => acc.h, /flush\(\) before reading H/);
      await acc.flush();
      acc.h.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) <= 1e-5 * scale, `${backend.name} H[${i}]: ${v} vs ${want[i]}`));
    }
    for (const bad of [NaN, Infinity]) {
      const x = batches[1]!.x.slice();
      x[3 * cols + 17] = bad;
      const acc = new HessianAccumulator(cols, backend);
      await acc.add(batches[0]!.x, batches[0]!.rows, batches[0]!.seqs);
      await acc.add(x, batches[1]!.rows, batches[1]!.seqs);
      await assert.rejects(acc.flush(), new RegExp(`NaN/Inf \\(row ${batches[0]!.rows + 3}\\)`));
    }
  }
});
