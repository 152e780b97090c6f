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
