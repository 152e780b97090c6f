import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import { quantizeColumn, subtractUpdates } from '../src/quant/gptq.js';
import { fitGrid, type RowGrid } from '../src/quant/quantizer.js';
import { SweepColumns } from '../src/tensor/sweep-column.js';

const root = new URL('..', import.meta.url);

for (const [kernel, file] of [
  ['matvec16', 'matvec16-wasm.ts'],
  ['sweepColumn', 'sweep-column-wasm.ts'],
] as const) {
  test(`the committed ${kernel} kernel is what scripts/build-wasm.mjs assembles from its WebAssembly text`, () => {
    const built = execFileSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const m = await import('./scripts/build-wasm.mjs'); process.stdout.write(m.source('${kernel}', await m.assemble('${kernel}')));`,
      ],
      { cwd: root, encoding: 'utf8' },
    );
    assert.equal(readFileSync(new URL(`src/tensor/${file}`, root), 'utf8'), built);
  });
}

/**
 * Columns that test the rounding: random weights, weights on the grid's half steps (ties: even and odd), past
 * either end of the grid (clamped), zeros and negative zeros.
 */
function columns(rows: number, n: number, grid: RowGrid, seed: number): Float64Array {
  const rand = seededRandom(seed);
  const x = Float64Array.from({ length: rows * n }, () => (rand() - 0.5) * 0.2);
  for (let i = 0; i < x.length; i += 5) {
    const r = i % rows;
    const [s, z] = [grid.scale[r]!, grid.zero[r]!];
    const k = Math.floor(rand() * 24) - 4 - z;
    x[i] = [s * (k + 0.5), s * k, 0, -0, s * 1e3, -s * 1e3][Math.floor(rand() * 6)]!;
  }
  return x;
}

test('the SIMD sweep kernel computes the bits of its TypeScript definition: codes, errors, losses and a run of updates', () => {
  const rows = 1002;
  const n = 8;
  const rand = seededRandom(7);
  for (const [bits, sym] of [
    [4, false],
    [3, true],
    [2, false],
    [8, true],
  ] as const) {
    const maxq = 2 ** bits - 1;
    const sample = Float64Array.from({ length: rows * 16 }, () => (rand() - 0.5) * 0.2);
    const grid = fitGrid(sample, rows, 16, 0, 16, { bits, sym, mse: false, fp16Scales: !sym });
    const x = columns(rows, n, grid, bits);
    // U's row of each column: its diagonal and the updates of the run's later columns
    const u = Float64Array.from({ length: n * n }, (_, i) => (i % (n + 1) === 0 ? 0.5 + rand() : (rand() - 0.5) * 2));

    // the definition: the loop of gptq(), on a copy of the columns
    const w = x.slice();
    const codes = new Uint8Array(rows * n);
    const err = new Float64Array(rows * n);
    const losses: number[] = [];
    for (let i = 0; i < n; i++) {
      const e = err.subarray(i * rows, (i + 1) * rows);
      losses.push(
        quantizeColumn(
          w.subarray(i * rows, (i + 1) * rows),
          u[i * n + i]!,
          grid,
          undefined,
          maxq,
          { codes, at: i, stride: n },
          e,
          undefined,
        ),
      );
      subtractUpdates(w, rows, n, [i + 1, n], u, e, i);
    }

    const k = new SweepColumns(rows, n, n);
    k.load(x);
    k.grid(grid.scale, grid.zero);
    for (let i = 0; i < n; i++) {
      assert.ok(Object.is(k.quantize(i, u[i * n + i]!, maxq, i), losses[i]), `w${bits}: column ${i}'s loss`);
      for (let j = i + 1; j < n; j++) k.update(j, i, u[i * n + j]!);
    }
    assert.deepEqual(k.codes(), codes, `w${bits}: codes`);
    assert.deepEqual(k.errors(n), Float32Array.from(err), `w${bits}: float32 errors`);
    const clamped = codes.filter((c) => c === 0 || c === maxq).length;
    assert.ok(clamped > rows / 10, `w${bits}: the columns reach both ends of the grid (${clamped} codes there)`);
  }
});
