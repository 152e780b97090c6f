import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { BLOCK_LAYOUTS, dequantizeRow, packBlock, unpackBlock, type BlockType } from '../src/formats/ggml-blocks.js';

/*
 * llama.cpp's block formats against the `gguf` Python package's dequantizer (scripts/gguf/make_block_fixtures.py):
 * random blocks of every type dequantize to the same float32 weights bit for bit, and pack back to the same bytes.
 */
const FIXTURE = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'ggml-blocks.json'), 'utf8')) as Record<
  string,
  { bytes: string; values: string }
>;

for (const [type, { bytes, values }] of Object.entries(FIXTURE) as [BlockType, { bytes: string; values: string }][]) {
  test(`${type}: our unpack + dequantize equals the gguf package's weights bit for bit; pack restores the bytes`, () => {
    const raw = new Uint8Array(Buffer.from(bytes, 'base64'));
    const b = Buffer.from(values, 'base64');
    const want = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    const got = dequantizeRow(type, raw, want.length);
    const bad = want.findIndex((v, i) => !Object.is(v, got[i]));
    assert.equal(bad, -1, `element ${bad}: ours ${got[bad]} vs gguf ${want[bad]}`);
    const L = BLOCK_LAYOUTS[type];
    const again = new Uint8Array(raw.length);
    for (let k = 0; k < raw.length / L.bytes; k++) packBlock(type, unpackBlock(type, raw, k * L.bytes), again, k * L.bytes);
    assert.deepEqual(again, raw);
  });
}

test('round-to-nearest in each block type: the file holds exactly the weights evaluated, and the error shrinks with the bits', async () => {
  const { roundToBlocks } = await import('../src/quant/ggml-grid.js');
  const { seededRandom } = await import('../src/calib/windows.js');
  const rand = seededRandom(3);
  // Gaussian-ish weights with an outlier per 256, as real rows have
  const row = Float32Array.from({ length: 1024 }, (_, i) => (rand() + rand() + rand() - 1.5) * 0.05 * (i % 256 === 7 ? 8 : 1));
  const rms: Record<string, number> = {};
  for (const type of Object.keys(BLOCK_LAYOUTS) as BlockType[]) {
    const { blocks, values } = roundToBlocks(type, row);
    const L = BLOCK_LAYOUTS[type];
    const bytes = new Uint8Array(blocks.length * L.bytes);
    blocks.forEach((b, k) => packBlock(type, b, bytes, k * L.bytes));
    const back = dequantizeRow(type, bytes, row.length);
    assert.equal(
      back.findIndex((v, i) => !Object.is(v, values[i])),
      -1,
      `${type}: packed weights differ from the evaluated ones`,
    );
    rms[type] = Math.sqrt(row.reduce((a, v, i) => a + (v - values[i]!) ** 2, 0) / row.length);
  }
  const order: BlockType[][] = [['Q2_K'], ['Q3_K'], ['Q4_0', 'Q4_1', 'Q4_K', 'IQ4_NL'], ['Q5_0', 'Q5_1', 'Q5_K'], ['Q6_K'], ['Q8_0']];
  for (let k = 1; k < order.length; k++)
    for (const hi of order[k]!) for (const lo of order[k - 1]!) assert.ok(rms[hi]! < rms[lo]!, `${hi} ${rms[hi]} vs ${lo} ${rms[lo]}`);
});

test('nearestCode (a binary search) picks what a scan over the codes in order picks: the nearest level, the lowest code on a tie', async () => {
  const { nearestCode } = await import('../src/quant/ggml-grid.js');
  const scan = (levels: Float32Array, x: number): number => {
    let best = 0;
    for (let c = 1; c < levels.length; c++) if (Math.abs(levels[c]! - x) < Math.abs(levels[best]! - x)) best = c;
    return best;
  };
  let seed = 7;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  let ties = 0;
  for (let trial = 0; trial < 3000; trial++) {
    const n = [4, 8, 16, 32, 64, 256][trial % 6]!;
    // levels as the formats make them: a·(q − z) rounded to float32, ascending or descending, some with runs of
    // equal levels (a tiny or zero factor), some with levels on a coarse grid so that x can sit exactly halfway
    const a = [1, -1, 1e-9, 0, 0.25, -0.5][Math.floor(rnd() * 6)]! * (trial % 5 === 0 ? 1 : rnd());
    const z = Math.floor(rnd() * n);
    // + m as Q4_1/Q5_1/K-quant mins add it: a large m beside a tiny factor makes runs of equal float32 levels
    const m = trial % 3 === 0 ? 1 : 0;
    const levels = Float32Array.from({ length: n }, (_, q) => Math.fround(Math.fround(a * (q - z)) + m));
    for (let j = 0; j < 20; j++) {
      const pick = rnd();
      const x =
        pick < 0.3
          ? levels[Math.floor(rnd() * n)]!
          : pick < 0.6
            ? (levels[Math.floor(rnd() * (n - 1))]! + levels[Math.floor(rnd() * (n - 1)) + 1]!) / 2
            : m + (rnd() - 0.5) * 2 * Math.max(Math.abs(a) * n * 1.2, 1e-6);
      const want = scan(levels, x);
      if (want < n - 1 && Math.abs(levels[want + 1]! - x) === Math.abs(levels[want]! - x)) ties++;
      // the same levels placed after others, as a row's sub-blocks are
      const padded = new Float32Array(n + 3);
      padded.set(levels, 3);
      assert.equal(nearestCode(padded, 3, n, x), want, `levels ${Array.from(levels.slice(0, 6))}…, x ${x}`);
    }
  }
  assert.ok(ties > 1000, `the cases exercise ties (${ties})`);
});
