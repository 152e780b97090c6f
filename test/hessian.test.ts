import assert from 'node:assert/strict';
import { test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import { HessianAccumulator } from '../src/quant/hessian.js';
import { ortBackend } from '../src/tensor/ort.js';
import { refBackend } from '../src/tensor/ref.js';

/*
 * H = 2/n·Σ x·xᵀ streamed in batches equals the one-shot float64 definition (float32 products: 1e-5 of the
 * largest entry), and non-finite activations are refused naming their row.
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
    const acc = new HessianAccumulator(cols, backend);
    for (const { seqs, rows, x } of batches) await acc.add(x, rows, seqs);
    acc.h.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) <= 1e-5 * scale, `${backend.name} H[${i}]: ${v} vs ${want[i]}`));
    for (const bad of [NaN, Infinity]) {
      const x = batches[0]!.x.slice();
      x[3 * cols + 17] = bad;
      await assert.rejects(new HessianAccumulator(cols, backend).add(x, batches[0]!.rows, 1), /NaN\/Inf \(row 3\)/);
    }
  }
});
