import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { calibrationWindows } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadTokenizer } from '../src/models/load.js';
import { babaiNearestPlane } from '../src/quant/babai.js';
import { gptq, GPTQ_REFERENCE } from '../src/quant/gptq.js';
import { fitGrid } from '../src/quant/quantizer.js';
import { quantizeModel, QUANTIZE_REFERENCE } from '../src/quant/quantize-model.js';
import { cholesky, upperCholeskyOfInverse } from '../src/tensor/cholesky.js';
import { getBackend } from '../src/tensor/index.js';

/** Real stories15M layers with the Hessians of their true-sequential calibration inputs. */
const real: { name: string; w: Float32Array; h: Float64Array; rows: number; cols: number }[] = [];
const WANTED = ['model.layers.0.self_attn.q_proj.weight', 'model.layers.2.mlp.down_proj.weight', 'model.layers.5.self_attn.o_proj.weight'];
before(async () => {
  const dir = await pullStories15m();
  const tokens = loadTokenizer(dir).encode((await loadText('sotu-calib')).slice(0, 300_000));
  await quantizeModel(
    dir,
    await getBackend(),
    { ...QUANTIZE_REFERENCE, bits: 4 },
    { windows: calibrationWindows(tokens, 16, 256, 0), seqlen: 256 },
    undefined,
    undefined,
    (name, w, h, q) => {
      if (WANTED.includes(name)) real.push({ name, w, h: h!, rows: q.rows, cols: q.cols });
    },
  );
});

function damped(h: Float64Array, n: number, percdamp: number): Float64Array {
  let mean = 0;
  for (let i = 0; i < n; i++) mean += h[i * n + i]! / n;
  const d = Float64Array.from(h);
  for (let i = 0; i < n; i++) d[i * n + i]! += percdamp * mean;
  return d;
}

for (const bits of [4, 8]) {
  test(`back-to-front GPTQ equals Babai's nearest plane on real layers (${bits}-bit, rows without clipping), and the error bound holds`, async () => {
    assert.equal(real.length, WANTED.length);
    const maxq = 2 ** bits - 1;
    for (const { name, w, h, rows, cols } of real) {
      const opts = { ...GPTQ_REFERENCE, bits, order: 'reverse' as const };
      const grid = fitGrid(w, rows, cols, 0, cols, opts);
      const ours = (await gptq(w, h, rows, cols, opts)).layer;
      const hd = damped(h, cols, opts.percdamp);
      const babai = babaiNearestPlane(w, rows, cols, hd, grid.scale, grid.zero);
      // ¼·Σ s²/U_ii², U the upper Cholesky factor of H⁻¹ in the sweep's (reversed) column order
      const rev = Float64Array.from(
        { length: cols * cols },
        (_, k) => hd[(cols - 1 - Math.floor(k / cols)) * cols + (cols - 1 - (k % cols))]!,
      );
      const U = upperCholeskyOfInverse(rev, cols)!;
      const invU2 = Array.from({ length: cols }, (_, i) => 1 / U[i * cols + i]! ** 2).reduce((a, b) => a + b, 0);
      // the same bound from Babai's side: ¼·Σ B_ii² with B = s·R, H = RᵀR
      const L = cholesky(hd, cols)!;
      const r2 = Array.from({ length: cols }, (_, i) => L[i * cols + i]! ** 2).reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(invU2 / r2 - 1) < 1e-9, 'the two forms of the bound agree');
      let compared = 0;
      let worstRatio = 0;
      for (let r = 0; r < rows; r++) {
        const k = babai.subarray(r * cols, (r + 1) * cols);
        if (k.some((v) => v < 0 || v > maxq)) continue; // Babai left the grid: GPTQ clipped, no equivalence claimed
        compared++;
        for (let c = 0; c < cols; c++) assert.equal(ours.codes[r * cols + c], k[c], `${name} row ${r} col ${c}`);
        const s = grid.scale[r]!;
        const e = Float64Array.from({ length: cols }, (_, c) => w[r * cols + c]! - s * (k[c]! - grid.zero[r]!));
        let err = 0;
        for (let i = 0; i < cols; i++) for (let j = 0; j < cols; j++) err += e[i]! * hd[i * cols + j]! * e[j]!;
        const bound = 0.25 * s * s * invU2;
        assert.ok(err <= bound * (1 + 1e-9), `${name} row ${r}: error ${err} > bound ${bound}`);
        worstRatio = Math.max(worstRatio, err / bound);
      }
      assert.ok(compared >= rows / 4, `${name}: only ${compared} of ${rows} rows without clipping`);
      assert.ok(worstRatio > 0 && worstRatio <= 1);
    }
  });
}
