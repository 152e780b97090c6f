import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { packLayer, unpackLayer } from '../src/formats/gptq-pack.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { dequantize, type QuantizedLayer } from '../src/quant/quantized-layer.js';

/** Golden files: a real stories15M weight packed by the Python ecosystem's own GPTQ packer (see shared/fixtures/README.md). */
const FIXTURES = fileURLToPath(new URL('../../shared/fixtures/', import.meta.url));
const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.safetensors'));

function fixtureLayer(f: SafetensorsFile): QuantizedLayer {
  const m = f.metadata;
  const rows = Number(m['rows']);
  const cols = Number(m['cols']);
  return {
    rows,
    cols,
    bits: Number(m['bits']),
    groupSize: Number(m['group_size']),
    sym: m['sym'] === 'True',
    codes: Uint8Array.from(f.read('codes').data as Int32Array),
    scales: f.read('scales_f32').data as Float32Array,
    zeros: f.read('zeros').data as Int32Array,
    gIdx: f.read('g_idx').data as Int32Array,
  };
}

test('there are golden fixtures for 2, 3, 4 and 8 bits', () => {
  assert.deepEqual([...new Set(files.map((f) => f.match(/_b(\d)_/)![1]))].sort(), ['2', '3', '4', '8']);
});

for (const name of files) {
  test(`packing ${name} is bit-exact with the Python ecosystem's packer, and unpacks back`, () => {
    const f = new SafetensorsFile(FIXTURES + name);
    const q = fixtureLayer(f);
    assert.deepEqual(dequantize(q), f.read('dequant').data as Float32Array, 'our dequantize matches the fixture definition');
    const packed = packLayer(q, 'gptq');
    assert.deepEqual(packed.qweight, f.read('qweight').data as Int32Array, 'qweight');
    assert.deepEqual(packed.qzeros, f.read('qzeros').data as Int32Array, 'qzeros');
    assert.deepEqual(packed.scales, f.read('scales').data as Uint16Array, 'scales');
    for (const format of ['gptq', 'gptq_v2'] as const) {
      const back = unpackLayer(packLayer(q, format), q, format);
      assert.deepEqual(back.codes, q.codes);
      assert.deepEqual(back.zeros, q.zeros);
      assert.deepEqual(back.scales, q.scales);
    }
    f.close();
  });
}
