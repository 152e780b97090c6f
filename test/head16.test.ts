import assert from 'node:assert/strict';
import { test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import { bf16ArrayToFloat, floatToHalf, halfArrayToFloat } from '../src/io/fp16.js';
import { head16Fits, openHead16 } from '../src/tensor/head16.js';
import type { StoredRows } from '../src/tensor/rows.js';

/** A table of 16-bit values from a few orders of magnitude, with zeros, negative zeros and (IEEE half) subnormals. */
function table(dtype: 'F16' | 'BF16', rows: number, cols: number, seed: number): StoredRows {
  const rnd = seededRandom(seed);
  const data = new Uint16Array(rows * cols);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < data.length; i++) {
    const kind = rnd();
    const v = kind < 0.05 ? 0 : kind < 0.1 ? -0 : (rnd() - 0.5) * 10 ** Math.floor(rnd() * 6 - 5);
    f[0] = v;
    data[i] = dtype === 'BF16' ? u[0]! >>> 16 : floatToHalf(v);
  }
  if (dtype === 'F16') {
    data[0] = 0x0001; // the smallest subnormal
    data[1] = 0x83ff; // the largest negative subnormal
    data[2] = 0x7bff; // 65504
  }
  return { dtype, data };
}

/** Each logit against the float64 dot product of its widened row, within float32 summation error. */
function assertLogits(y: Float32Array, wide: Float32Array, x: Float32Array, rows: number, cols: number, what: string): void {
  assert.equal(y.length, rows);
  for (let r = 0; r < rows; r++) {
    let want = 0;
    let scale = 0;
    for (let c = 0; c < cols; c++) {
      want += wide[r * cols + c]! * x[c]!;
      scale += Math.abs(wide[r * cols + c]! * x[c]!);
    }
    assert.ok(Math.abs(y[r]! - want) <= 1e-6 * scale + 1e-30, `${what} row ${r}: ${y[r]} vs ${want}`);
  }
}

for (const dtype of ['BF16', 'F16'] as const) {
  test(`${dtype} head kernel: each logit is the float64 dot product of the widened row, within float32 summation error`, () => {
    for (const [rows, cols] of [
      [1, 16],
      [37, 16],
      [301, 288],
      [5, 4096],
    ] as const) {
      const w = table(dtype, rows, cols, rows + cols);
      const wide = dtype === 'BF16' ? bf16ArrayToFloat(w.data as Uint16Array) : halfArrayToFloat(w.data as Uint16Array);
      assert.ok(head16Fits(w, rows, cols));
      const head = openHead16(w, rows, cols);
      assert.deepEqual(head.table.data, w.data, 'the table moves unchanged');
      const rnd = seededRandom(cols);
      const x = Float32Array.from({ length: cols }, () => (rnd() - 0.5) * 8);
      assertLogits(head.logits(x), wide, x, rows, cols, `${rows}x${cols}`);
    }
  });
}

test('F16 heads of trained-looking weights take the rebiased kernel and its correction: logits within float32 summation error', () => {
  // N(0, 0.02) halves (about 0.24% of them subnormal) with zeros and negative zeros sprinkled in, as a trained head has;
  // the kernel's integer rebias misreads every half whose exponent is 0, and the correction puts each one right
  const [rows, cols] = [203, 2048];
  const rnd = seededRandom(7);
  const gauss = (): number => Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
  const data = Uint16Array.from({ length: rows * cols }, () => {
    const u = rnd();
    return u < 0.001 ? 0 : u < 0.002 ? 0x8000 : floatToHalf(0.02 * gauss());
  });
  const subnormals = data.filter((h) => (h & 0x7c00) === 0 && (h & 0x3ff) !== 0).length;
  assert.ok(subnormals > rows, `the table has subnormal halves (${subnormals})`);
  const wide = halfArrayToFloat(data);
  const head = openHead16({ dtype: 'F16', data }, rows, cols);
  assert.equal(head.kernel, 'f16r');
  assert.equal(openHead16(table('F16', 37, 16, 53), 37, 16).kernel, 'f16', 'a table of many zeros and subnormals keeps the exact kernel');
  const x = Float32Array.from({ length: cols }, () => gauss() * 4);
  assertLogits(head.logits(x), wide, x, rows, cols, 'N(0, 0.02)');
  // rows with none of them between rows with some: each row's correction is its own
  const sparse = Uint16Array.from({ length: 64 * 64 }, (_, i) => floatToHalf((1 + (i % 7)) / 1024));
  [3 * 64 + 5, 40 * 64, 63 * 64 + 63].forEach((i, k) => (sparse[i] = [0x8000, 0x0001, 0x83ff][k]!));
  const few = openHead16({ dtype: 'F16', data: sparse }, 64, 64);
  assert.equal(few.kernel, 'f16r');
  assertLogits(few.logits(x.subarray(0, 64)), halfArrayToFloat(sparse), x.subarray(0, 64), 64, 64, 'sparse');
});

test('16-bit heads: several open at once each give their own logits; tables the kernel cannot take are refused', () => {
  const a = table('BF16', 64, 32, 1);
  const b = table('F16', 96, 48, 2);
  const ha = openHead16(a, 64, 32);
  const hb = openHead16(b, 96, 48);
  const xa = Float32Array.from({ length: 32 }, (_, i) => Math.cos(i));
  const xb = Float32Array.from({ length: 48 }, (_, i) => Math.sin(i));
  const first = [ha.logits(xa), hb.logits(xb)];
  assert.deepEqual([ha.logits(xa), hb.logits(xb)], first);
  assert.notDeepEqual(first[0], openHead16(table('BF16', 64, 32, 3), 64, 32).logits(xa));
  assert.equal(head16Fits({ dtype: 'F32', data: new Float32Array(64) }, 4, 16), false);
  assert.equal(head16Fits(table('BF16', 4, 24, 4), 4, 24), false);
  assert.throws(() => openHead16(table('BF16', 4, 24, 4), 4, 24), /does not fit/);
});
