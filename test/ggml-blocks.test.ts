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
