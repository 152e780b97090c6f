import assert from 'node:assert/strict';
import { test } from 'node:test';
import { calibrationWindows } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { roundToHalf } from '../src/io/fp16.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadTokenizer } from '../src/models/load.js';
import { gptq, GPTQ_REFERENCE, prepareHessian, type GptqOptions } from '../src/quant/gptq.js';
import { dequantize, type QuantizedLayer } from '../src/quant/quantized-layer.js';
import { fitGrid, quantizeValue, roundHalfEven } from '../src/quant/quantizer.js';
import { quantizeModel, QUANTIZE_REFERENCE, validateOptions } from '../src/quant/quantize-model.js';
import { rtn } from '../src/quant/rtn.js';
import { getBackend } from '../src/tensor/index.js';
import { cholesky, upperCholeskyOfInverse } from '../src/tensor/cholesky.js';
import { seededRandom } from '../src/calib/windows.js';
import { readModelConfig } from '../src/models/index.js';

const rand = seededRandom(42);
const randn = (): number => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());

/** A random layer and a positive-definite Hessian 2/n·XᵀX from correlated random inputs. */
function randomProblem(rows: number, cols: number, n = 64): { w: Float32Array; h: Float64Array } {
  const w = Float32Array.from({ length: rows * cols }, () => randn() * 0.1);
  const x = new Float64Array(n * cols);
  for (let s = 0; s < n; s++) {
    const common = randn();
    for (let c = 0; c < cols; c++) x[s * cols + c] = randn() * (1 + c / cols) + common;
  }
  const h = new Float64Array(cols * cols);
  for (let s = 0; s < n; s++)
    for (let i = 0; i < cols; i++) for (let j = 0; j < cols; j++) h[i * cols + j]! += (2 / n) * x[s * cols + i]! * x[s * cols + j]!;
  return { w, h };
}

function invert(a: Float64Array, n: number): Float64Array {
  // Gauss-Jordan with partial pivoting: an inverse that shares no code with the Cholesky path
  const m = Float64Array.from(a);
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) inv[i * n + i] = 1;
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r * n + c]!) > Math.abs(m[p * n + c]!)) p = r;
    for (const t of [m, inv]) for (let j = 0; j < n; j++) [t[c * n + j], t[p * n + j]] = [t[p * n + j]!, t[c * n + j]!];
    const d = m[c * n + c]!;
    for (const t of [m, inv]) for (let j = 0; j < n; j++) t[c * n + j]! /= d;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r * n + c]!;
      for (const t of [m, inv]) for (let j = 0; j < n; j++) t[r * n + j]! -= f * t[c * n + j]!;
    }
  }
  return inv;
}

/**
 * The paper's algorithm written from its equations, one column at a time: quantize column q, update the
 * remaining weights by δ = −(w_q − quant(w_q)) / [H⁻¹]_qq · [H⁻¹]_{q,:}, then remove q from the inverse
 * Hessian by Gaussian elimination, H⁻¹ ← H⁻¹ − H⁻¹_{:,q} H⁻¹_{q,:} / [H⁻¹]_qq. No Cholesky, no blocks.
 */
function columnByColumn(
  w0: Float32Array,
  h: Float64Array,
  rows: number,
  cols: number,
  opts: GptqOptions,
): { codes: Uint8Array; loss: number } {
  const W = Float64Array.from(w0);
  const Hd = Float64Array.from(h);
  let mean = 0;
  for (let i = 0; i < cols; i++) mean += h[i * cols + i]! / cols;
  for (let i = 0; i < cols; i++) Hd[i * cols + i]! += opts.percdamp * mean;
  const Hinv = invert(Hd, cols);
  const maxq = 2 ** opts.bits - 1;
  const codes = new Uint8Array(rows * cols);
  let grid = fitGrid(W, rows, cols, 0, cols, opts);
  let loss = 0;
  for (let q = 0; q < cols; q++) {
    if (opts.groupSize > 0 && q % opts.groupSize === 0) grid = fitGrid(W, rows, cols, q, opts.groupSize, opts);
    const d = Hinv[q * cols + q]!;
    for (let r = 0; r < rows; r++) {
      const w = W[r * cols + q]!;
      const code = quantizeValue(w, grid.scale[r]!, grid.zero[r]!, maxq);
      codes[r * cols + q] = code;
      const e = w - grid.scale[r]! * (code - grid.zero[r]!);
      loss += (e * e) / d / 2;
      for (let j = q + 1; j < cols; j++) W[r * cols + j]! -= (e / d) * Hinv[q * cols + j]!;
    }
    const col = Float64Array.from({ length: cols }, (_, i) => Hinv[i * cols + q]!);
    for (let i = 0; i < cols; i++) for (let j = 0; j < cols; j++) Hinv[i * cols + j]! -= (col[i]! * col[j]!) / d;
  }
  return { codes, loss };
}

test('upper Cholesky of H⁻¹ satisfies Uᵀ·U·H = I and is upper triangular', async () => {
  const n = 9;
  const { h } = randomProblem(1, n);
  const U = upperCholeskyOfInverse(h, n)!;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < i; j++) assert.equal(U[i * n + j], 0);
    assert.ok(U[i * n + i]! > 0);
  }
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < n; k++) {
        let utu = 0;
        for (let m = 0; m < n; m++) utu += U[m * n + i]! * U[m * n + k]!;
        s += utu * h[k * n + j]!;
      }
      assert.ok(Math.abs(s - (i === j ? 1 : 0)) < 1e-9, `(UᵀU·H)[${i},${j}] = ${s}`);
    }
  }
  assert.equal(cholesky(Float64Array.from([1, 2, 2, 1]), 2), undefined, 'indefinite matrix is refused');
});

for (const [groupSize, cols] of [
  [-1, 14], // blocks of 4: three full blocks and a remainder of 2
  [4, 12],
] as const) {
  test(`lazy-batch GPTQ equals the column-by-column definition (group size ${groupSize})`, async () => {
    const rows = 7;
    const { w, h } = randomProblem(rows, cols);
    const opts = { ...GPTQ_REFERENCE, bits: 3, groupSize, blocksize: 4, fp16Scales: false };
    const fast = await gptq(w, h, rows, cols, opts);
    const def = columnByColumn(w, h, rows, cols, opts);
    assert.deepEqual(fast.layer.codes, def.codes);
    assert.ok(Math.abs(fast.loss - def.loss) <= 1e-6 * def.loss, `loss ${fast.loss} vs ${def.loss}`);
  });
}

test('quantizer grid follows the reference conventions', async () => {
  const w = Float32Array.from([-1, 0.5, 3, /* row 2 */ 0, 0, 0, /* row 3 */ 0.2, 0.4, 0.6]);
  const asym = fitGrid(w, 3, 3, 0, 3, { bits: 4, sym: false, mse: false, fp16Scales: false });
  assert.ok(Math.abs(asym.scale[0]! - 4 / 15) < 1e-12);
  assert.equal(asym.zero[0], roundHalfEven(1 / (4 / 15)));
  assert.ok(Math.abs(asym.scale[1]! - 2 / 15) < 1e-12, 'all-zero row gets range [-1, 1]');
  assert.equal(asym.zero[2], 0, 'range always contains 0');
  assert.ok(Math.abs(asym.scale[2]! - Math.fround(0.6) / 15) < 1e-12);
  const sym = fitGrid(w, 3, 3, 0, 3, { bits: 4, sym: true, mse: false, fp16Scales: false });
  assert.ok(Math.abs(sym.scale[0]! - (2 * 3) / 15) < 1e-12);
  assert.equal(sym.zero[0], 8);
  assert.equal(roundHalfEven(2.5), 2);
  assert.equal(roundHalfEven(3.5), 4);
  assert.equal(roundHalfEven(-2.5), -2);
  const half = fitGrid(w, 3, 3, 0, 3, { bits: 4, sym: false, mse: false, fp16Scales: true });
  for (const s of half.scale) assert.equal(roundToHalf(s), s, 'scales are fp16 values');
});

test('roundHalfEven rounds half to even everywhere, on both sides of its fast range', () => {
  // the definition: nearest integer, ties to the even neighbour, never -0
  const definition = (x: number): number => {
    const f = Math.floor(x);
    const d = x - f;
    const r = d < 0.5 ? f : d > 0.5 ? f + 1 : f % 2 === 0 ? f : f + 1;
    return r + 0;
  };
  const xs = [0, -0, 0.49999999999999994, -0.49999999999999994, 0.5, -0.5, 1.5, -1.5, 7.5, -8.5, 1e-300, -1e-300];
  for (const e of [20, 50, 51, 52, 53, 60]) {
    const p = 2 ** e;
    xs.push(p, -p, p - 0.5, -(p - 0.5), p + 0.5, -(p + 0.5), p - 1.5, p + 1.5, p * 1.25 + 0.5);
  }
  const rand = seededRandom(3);
  for (let i = 0; i < 10000; i++) xs.push((rand() - 0.5) * 40, Math.round((rand() - 0.5) * 200) / 2);
  for (const x of xs)
    assert.ok(Object.is(roundHalfEven(x), definition(x)), `roundHalfEven(${x}) = ${roundHalfEven(x)}, not ${definition(x)}`);
  assert.ok(Number.isNaN(roundHalfEven(NaN)));
  assert.equal(roundHalfEven(Infinity), Infinity);
});

test('fitGrid reads a column-major slice as it reads the same slice row-major', () => {
  const rows = 37;
  const cols = 50;
  const rand = seededRandom(4);
  const rowMajor = Float64Array.from({ length: rows * cols }, () => rand() - 0.4);
  const colMajor = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) colMajor[c * rows + r] = rowMajor[r * cols + c]!;
  for (const opts of [
    { bits: 4, sym: true, mse: false, fp16Scales: true },
    { bits: 3, sym: false, mse: true, fp16Scales: false },
  ]) {
    const a = fitGrid(rowMajor, rows, cols, 10, 32, opts);
    const b = fitGrid(colMajor, rows, 1, 10 * rows, 32, opts, rows);
    assert.deepEqual(b, a);
  }
});

test('mse grid search never does worse than the plain min/max grid', async () => {
  const { w } = randomProblem(16, 64);
  w[5] = 2; // an outlier, which shrinking the range helps
  const err = (mse: boolean): number => {
    const q = rtn(w, 16, 64, { bits: 3, sym: false, mse, fp16Scales: true, groupSize: -1 });
    const d = dequantize(q);
    return w.reduce((a, x, i) => a + Math.abs(x - d[i]!) ** 2.4, 0);
  };
  assert.ok(err(true) < err(false));
});

test('with a diagonal Hessian GPTQ is RTN, and act-order un-permutes codes and groups', async () => {
  const rows = 5;
  const cols = 16;
  const { w } = randomProblem(rows, cols);
  const h = new Float64Array(cols * cols);
  const diag = Array.from({ length: cols }, (_, i) => 1 + ((i * 7) % cols));
  diag.forEach((d, i) => (h[i * cols + i] = d));
  const base = { ...GPTQ_REFERENCE, bits: 4 };
  assert.deepEqual((await gptq(w, h, rows, cols, { ...base, actOrder: true })).layer.codes, rtn(w, rows, cols, { ...base }).codes);

  const grouped = (await gptq(w, h, rows, cols, { ...base, actOrder: true, groupSize: 4 })).layer;
  const order = Array.from({ length: cols }, (_, i) => i).sort((a, b) => diag[b]! - diag[a]!);
  for (let g = 0; g < 4; g++) {
    const members = order.slice(g * 4, g * 4 + 4);
    for (const c of members) assert.equal(grouped.gIdx[c], g, `column ${c} belongs to group ${g}`);
    // the group's grid is RTN's grid over exactly those columns
    const sub = Float32Array.from({ length: rows * 4 }, (_, i) => w[Math.floor(i / 4) * cols + members[i % 4]!]!);
    const ref = rtn(sub, rows, 4, { ...base, groupSize: -1 });
    for (let r = 0; r < rows; r++) {
      assert.equal(grouped.scales[r * 4 + g], ref.scales[r]);
      members.forEach((c, k) => assert.equal(grouped.codes[r * cols + c], ref.codes[r * 4 + k]));
    }
  }
});

test('static groups keep natural-order groups fitted before the sweep', async () => {
  const rows = 6;
  const cols = 16;
  const { w, h } = randomProblem(rows, cols);
  const opts = { ...GPTQ_REFERENCE, bits: 3, groupSize: 4, actOrder: true, staticGroups: true };
  const q = (await gptq(w, h, rows, cols, opts)).layer;
  assert.deepEqual(
    Array.from(q.gIdx),
    Array.from({ length: cols }, (_, c) => Math.floor(c / 4)),
  );
  assert.deepEqual(q.scales, rtn(w, rows, cols, opts).scales);
});

test('dead inputs give zero weights; a singular Hessian raises the damping with a warning', async () => {
  const rows = 4;
  const cols = 8;
  const { w, h } = randomProblem(rows, cols);
  for (let i = 0; i < cols; i++) h[3 * cols + i] = h[i * cols + 3] = 0;
  const deq = dequantize((await gptq(w, h, rows, cols, GPTQ_REFERENCE)).layer);
  for (let r = 0; r < rows; r++) assert.equal(deq[r * cols + 3], 0);
  assert.ok(deq.every(Number.isFinite));

  const v = Float64Array.from({ length: cols }, (_, i) => i + 1);
  const rank1 = Float64Array.from({ length: cols * cols }, (_, k) => v[Math.floor(k / cols)]! * v[k % cols]!);
  const warnings: string[] = [];
  const r = await gptq(w, rank1, rows, cols, { ...GPTQ_REFERENCE, percdamp: 0 }, { warn: (m) => void warnings.push(m) });
  assert.ok(r.percdamp > 0 && warnings.length > 0 && /Cholesky failed/.test(warnings[0]!));
  assert.ok(dequantize(r.layer).every(Number.isFinite));
});

/** ½·tr((W − Q) H (W − Q)ᵀ): the layer's output error on the calibration inputs */
function outputError(w: Float32Array, q: QuantizedLayer, h: Float64Array): number {
  const d = dequantize(q);
  const { rows, cols } = q;
  let total = 0;
  const e = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) e[c] = w[r * cols + c]! - d[r * cols + c]!;
    for (let i = 0; i < cols; i++) {
      if (e[i] === 0) continue;
      let s = 0;
      for (let j = 0; j < cols; j++) s += h[i * cols + j]! * e[j]!;
      total += e[i]! * s;
    }
  }
  return total / 2;
}

test('GPTQ beats RTN on the output error of every real stories15M layer (w3, true-sequential)', async () => {
  const dir = await pullStories15m();
  const tokens = loadTokenizer(dir).encode((await loadText('sotu-calib')).slice(0, 400_000));
  const opts = { ...QUANTIZE_REFERENCE, bits: 3 };
  const rows: string[] = [];
  await quantizeModel(
    dir,
    await getBackend(),
    opts,
    { windows: calibrationWindows(tokens, 16, 256, 0), seqlen: 256 },
    undefined,
    undefined,
    (name, w, h, q) => {
      const r = rtn(w, q.rows, q.cols, opts);
      const eg = outputError(w, q, h!);
      const er = outputError(w, r, h!);
      rows.push(name);
      assert.ok(eg < er, `${name}: GPTQ ${eg} vs RTN ${er}`);
    },
  );
  assert.equal(rows.length, 42);
});

test('impossible options are refused before any work', async () => {
  const cfg = readModelConfig(await pullStories15m());
  const ok = { ...QUANTIZE_REFERENCE };
  assert.throws(() => validateOptions(cfg, { ...ok, bits: 5 }), /--bits 5 is not supported/);
  assert.throws(
    () => validateOptions(cfg, { ...ok, groupSize: 512 }),
    /--group-size 512 is larger than self_attn\.q_proj's 288 input columns/,
  );
  assert.throws(() => validateOptions(cfg, { ...ok, groupSize: 0 }), /--group-size 0 must be a positive integer or -1/);
  validateOptions(cfg, { ...ok, groupSize: 128 }); // 288 = 128 + 128 + 32: a partial last group, as the reference allows
  assert.throws(() => validateOptions(cfg, { ...ok, staticGroups: true }), /--static-groups needs a --group-size/);
  assert.throws(() => validateOptions(cfg, { ...ok, percdamp: -1 }), /--damp -1/);
  assert.throws(() => validateOptions(cfg, ok, { nsamples: 0, seqlen: 256 }), /--nsamples 0/);
  assert.throws(() => validateOptions(cfg, ok, { nsamples: 8, seqlen: 1000 }), /--seqlen 1000 must be in 2\.\.256/);
  assert.throws(() => validateOptions(cfg, { ...ok, method: 'rtn', actOrder: true }), /RTN has no column order/);
  assert.throws(() => validateOptions(cfg, { ...ok, order: 'reverse', actOrder: true }), /two different column orders/);
});

/** GPTQv2's per-column rule from its definition: W[:, i:] −= e·U[i, i:] − w·P[i, i:], P = α·triu₁(dXXᵀ·Uᵀ)·U. */
function gptqv2ColumnByColumn(
  w0: Float32Array,
  h: Float64Array,
  dXXt: Float64Array,
  rows: number,
  cols: number,
  opts: GptqOptions,
  alpha: number,
): Uint8Array {
  const Hd = Float64Array.from(h);
  let mean = 0;
  for (let i = 0; i < cols; i++) mean += h[i * cols + i]! / cols;
  for (let i = 0; i < cols; i++) Hd[i * cols + i]! += opts.percdamp * mean;
  const U = upperCholeskyOfInverse(Hd, cols)!;
  const P = new Float64Array(cols * cols);
  for (let i = 0; i < cols; i++) {
    for (let j = 0; j < cols; j++) {
      let s = 0;
      for (let k = i + 1; k < cols; k++) {
        let a = 0; // (dXXᵀ·Uᵀ)[i][k]
        for (let m = 0; m < cols; m++) a += dXXt[i * cols + m]! * U[k * cols + m]!;
        s += a * U[k * cols + j]!;
      }
      P[i * cols + j] = alpha * s;
    }
  }
  const W = Float64Array.from(w0);
  const grid = fitGrid(W, rows, cols, 0, cols, opts);
  const codes = new Uint8Array(rows * cols);
  for (let i = 0; i < cols; i++) {
    for (let r = 0; r < rows; r++) {
      const w = W[r * cols + i]!;
      const code = quantizeValue(w, grid.scale[r]!, grid.zero[r]!, 2 ** opts.bits - 1);
      codes[r * cols + i] = code;
      const e = (w - grid.scale[r]! * (code - grid.zero[r]!)) / U[i * cols + i]!;
      for (let j = i + 1; j < cols; j++) W[r * cols + j]! -= e * U[i * cols + j]! - w * P[i * cols + j]!;
    }
  }
  return codes;
}

test('GPTQv2 within one block equals its per-column definition, and with no asymmetry is GPTQ', async () => {
  const rows = 6;
  const cols = 12;
  const { w, h } = randomProblem(rows, cols);
  const dXXt = Float64Array.from({ length: cols * cols }, () => randn() * 0.3);
  const opts = { ...GPTQ_REFERENCE, bits: 3, blocksize: 128, fp16Scales: false };
  const v2 = (await gptq(w, h, rows, cols, opts, { asym: { dXXt, alpha: 0.25 } })).layer.codes;
  assert.deepEqual(v2, gptqv2ColumnByColumn(w, h, dXXt, rows, cols, opts, 0.25));
  assert.notDeepEqual(v2, (await gptq(w, h, rows, cols, opts)).layer.codes, 'the asymmetric term changes the result');
  const none = await gptq(w, h, rows, cols, { ...opts, blocksize: 4 }, { asym: { dXXt: new Float64Array(cols * cols), alpha: 0.25 } });
  assert.deepEqual(none.layer.codes, (await gptq(w, h, rows, cols, { ...opts, blocksize: 4 })).layer.codes);
});

test('the Hessian prepared with backend gemms (blocked Cholesky, GPTQv2 correction) equals the plain float64 one', async () => {
  const { ortBackend } = await import('../src/tensor/ort.js');
  const cols = 300;
  const { h } = randomProblem(8, cols, 401);
  const asym = { dXXt: Float64Array.from({ length: cols * cols }, () => randn() * 0.01), alpha: 0.25 };
  const opts = { ...GPTQ_REFERENCE, actOrder: true };
  const plain = await prepareHessian(h, cols, opts, undefined, asym);
  const fast = await prepareHessian(h, cols, opts, undefined, asym, ortBackend.matmul64);
  assert.deepEqual(fast.perm, plain.perm);
  for (const [name, a, b] of [
    ['U', fast.U, plain.U],
    ['P', fast.P!, plain.P!],
  ] as const) {
    const scale = b.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) <= 1e-9 * scale, `${name}[${i}]: ${v} vs ${b[i]}`));
  }
});

test('the fast path (float32 products on the backend, inner batches, right- and left-looking) matches the float64 definition', async () => {
  const { ortBackend } = await import('../src/tensor/ort.js');
  const rows = 48;
  // five full blocks of 128 and a remainder: a gather of four blocks, then one of the rest
  const cols = 700;
  const { w, h } = randomProblem(rows, cols, 400);
  const dXXt = Float64Array.from({ length: cols * cols }, () => randn() * 0.01);
  // g64 nests in blocks (left-looking); g96 straddles them (right-looking)
  for (const groupSize of [64, 96, -1]) {
    for (const asym of [undefined, { dXXt, alpha: 0.25 }]) {
      const opts = { ...GPTQ_REFERENCE, bits: 4, groupSize };
      const slow = await gptq(w, h, rows, cols, opts, asym ? { asym } : {});
      const fast = await gptq(w, h, rows, cols, opts, {
        matmulNN: ortBackend.matmulNN,
        matmul64: ortBackend.matmul64,
        ...(asym ? { asym } : {}),
      });
      const what = `g${groupSize}${asym ? ' v2' : ''}`;
      // float32 products move a weight by ~1e-7 of its size: a code flips only where the weight sits that close
      // to a rounding boundary (none do here; allow 1 in 1000), and the loss moves by as little (seen: < 1e-8)
      const differ = fast.layer.codes.filter((c, i) => c !== slow.layer.codes[i]).length;
      assert.ok(differ <= rows * cols * 1e-3, `${what}: ${differ} codes differ`);
      assert.ok(Math.abs(fast.loss / slow.loss - 1) < 1e-6, `${what}: loss ${fast.loss} vs ${slow.loss}`);
    }
  }
});

test('GPTQ on every llama.cpp block grid at super-block widths: the packed blocks hold exactly the evaluated weights, at a lower output error than rounding', async () => {
  const { ortBackend } = await import('../src/tensor/ort.js');
  const { BLOCK_LAYOUTS, dequantizeRow, packBlock } = await import('../src/formats/ggml-blocks.js');
  const { blockTypeOf, layerBlock } = await import('../src/quant/quantized-layer.js');
  const rows = 16;
  const cols = 512; // two K-quant super-blocks a row: every type is itself, no fallback (stories15M's 288 falls back)
  const { w, h } = randomProblem(rows, cols, 256);
  const outputError = (q: QuantizedLayer): number => {
    const e = dequantize(q).map((v, i) => w[i]! - v);
    let s = 0;
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < cols; i++) {
        let hi = 0;
        for (let j = 0; j < cols; j++) hi += h[i * cols + j]! * e[r * cols + j]!;
        s += e[r * cols + i]! * hi;
      }
    return s;
  };
  for (const type of Object.keys(BLOCK_LAYOUTS) as (keyof typeof BLOCK_LAYOUTS)[]) {
    const opts = { ...GPTQ_REFERENCE, sym: true, blockType: type };
    const q = (await gptq(w, h, rows, cols, opts, { matmulNN: ortBackend.matmulNN, matmul64: ortBackend.matmul64 })).layer;
    assert.equal(blockTypeOf(q), type);
    const L = BLOCK_LAYOUTS[type];
    const bytes = new Uint8Array((rows * cols * L.bytes) / L.size);
    for (let k = 0; k < (rows * cols) / L.size; k++) packBlock(type, layerBlock(q, k), bytes, k * L.bytes);
    const want = dequantize(q);
    const rowBytes = (cols / L.size) * L.bytes;
    for (let r = 0; r < rows; r++) {
      const got = dequantizeRow(type, bytes.subarray(r * rowBytes, (r + 1) * rowBytes), cols);
      const bad = got.findIndex((v, c) => !Object.is(v, want[r * cols + c]));
      assert.equal(bad, -1, `${type} row ${r} column ${bad}: packed ${got[bad]} vs evaluated ${want[r * cols + bad]}`);
    }
    const ours = outputError(q);
    const rounded = outputError(rtn(w, rows, cols, opts));
    // measured: 0.24 (Q4_1) to 0.31 (Q2_K, Q5_0) of rounding's error
    assert.ok(ours < 0.5 * rounded, `${type}: GPTQ output error ${ours} vs round-to-nearest ${rounded}`);
  }
});

test('the blocked factorization works on H in place and leaves it exactly as it was, also after a failed attempt', async () => {
  const { ortBackend } = await import('../src/tensor/ort.js');
  const cols = 300;
  const { h } = randomProblem(8, cols, 402);
  for (let i = 0; i < cols; i++) h[7 * cols + i] = h[i * cols + 7] = 0; // a dead input
  const before = h.slice();
  const fast = await prepareHessian(h, cols, GPTQ_REFERENCE, undefined, undefined, ortBackend.matmul64);
  assert.deepEqual(h, before);
  const plain = await prepareHessian(h, cols, GPTQ_REFERENCE);
  const scale = plain.U.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  fast.U.forEach((v, i) => assert.ok(Math.abs(v - plain.U[i]!) <= 1e-9 * scale, `U[${i}]: ${v} vs ${plain.U[i]}`));

  // rank one: Cholesky fails without damping, and the retry must start from the same H
  const v = Float64Array.from({ length: cols }, (_, i) => Math.sin(i + 1));
  const rank1 = Float64Array.from({ length: cols * cols }, (_, k) => v[Math.floor(k / cols)]! * v[k % cols]!);
  const copy = rank1.slice();
  const warnings: string[] = [];
  const r = await prepareHessian(
    rank1,
    cols,
    { ...GPTQ_REFERENCE, percdamp: 0 },
    (m) => void warnings.push(m),
    undefined,
    ortBackend.matmul64,
  );
  assert.ok(r.percdamp > 0 && warnings.length > 0);
  assert.deepEqual(rank1, copy);
  const again = await prepareHessian(
    copy.slice(),
    cols,
    { ...GPTQ_REFERENCE, percdamp: r.percdamp },
    undefined,
    undefined,
    ortBackend.matmul64,
  );
  assert.deepEqual(r.U, again.U);
});
