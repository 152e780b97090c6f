import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { floatToHalf, halfToFloat } from '../src/io/fp16.js';
import { SafetensorsFile, SafetensorsModel, toFloat32, writeSafetensors, type TensorToWrite } from '../src/io/safetensors.js';
import { tempDir } from './helpers/temp.js';

const tmp = (): string => tempDir('st-');

test('fp16 conversion: exact values, round-to-nearest-even, subnormals, overflow', () => {
  // bit patterns from the IEEE 754 binary16 definition
  const cases: [number, number][] = [
    [0, 0x0000],
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65520, 0x7c00], // rounds up to +inf
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // tie between 0 and the smallest subnormal rounds to even (0)
    [1 + 2 ** -11, 0x3c00], // tie -> even
    [1 + 3 * 2 ** -11, 0x3c02], // tie -> even (up)
    [0.1, 0x2e66],
  ];
  for (const [f, h] of cases) assert.equal(floatToHalf(f), h, `floatToHalf(${f})`);
  for (let h = 0; h < 0x7c00; h += 97) assert.equal(floatToHalf(halfToFloat(h)), h);
  assert.ok(Number.isNaN(halfToFloat(floatToHalf(NaN))));
});

test('safetensors round trip of every dtype, with an independent byte-level check', async () => {
  const dir = tmp();
  const path = join(dir, 'x.safetensors');
  const tensors = new Map<string, TensorToWrite>([
    ['f32', { dtype: 'F32', shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0, 1e-8, 7]) }],
    ['f16', { dtype: 'F16', shape: [2], data: Uint16Array.from([0x3c00, 0xc000]) }],
    ['bf16', { dtype: 'BF16', shape: [1, 2], data: Uint16Array.from([0x3f80, 0x4040]) }],
    ['i32', { dtype: 'I32', shape: [3], data: Int32Array.from([-1, 0, 2 ** 31 - 1]) }],
    ['i8', { dtype: 'I8', shape: [2], data: Int8Array.from([-128, 127]) }],
    ['u8', { dtype: 'U8', shape: [1], data: Uint8Array.from([255]) }],
  ]);
  await writeSafetensors(path, tensors);
  const bytes = readFileSync(path);
  const hlen = Number(bytes.readBigUInt64LE(0));
  assert.equal((8 + hlen) % 8, 0, 'data is 8-byte aligned');
  const header = JSON.parse(bytes.subarray(8, 8 + hlen).toString());
  assert.deepEqual(header.f32, { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] });
  assert.equal(bytes.readFloatLE(8 + hlen + 8), 3.5);

  const f = new SafetensorsFile(path);
  for (const [name, t] of tensors) {
    const r = f.read(name);
    assert.equal(r.dtype, t.dtype);
    assert.deepEqual(r.shape, t.shape);
    assert.deepEqual(Array.from(r.data as ArrayLike<number>), Array.from(t.data as ArrayLike<number>));
  }
  assert.deepEqual(Array.from(toFloat32(f.read('f16'), 'f16')), [1, -2]);
  assert.deepEqual(Array.from(toFloat32(f.read('bf16'), 'bf16')), [1, 3]);
  f.close();
});

test('sharded models are read through model.safetensors.index.json', async () => {
  const dir = tmp();
  await writeSafetensors(join(dir, 'a.safetensors'), new Map([['x', { dtype: 'F32', shape: [1], data: Float32Array.from([1]) }]]));
  await writeSafetensors(join(dir, 'b.safetensors'), new Map([['y', { dtype: 'F32', shape: [2], data: Float32Array.from([2, 3]) }]]));
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { x: 'a.safetensors', y: 'b.safetensors' } }));
  const m = new SafetensorsModel(dir);
  assert.deepEqual(m.names().sort(), ['x', 'y']);
  assert.deepEqual(Array.from(m.readFloat('y', [2])), [2, 3]);
  assert.throws(() => m.readFloat('y', [3]), /tensor y has shape \[2\] but the config implies \[3\]/);
});

test('corrupt files are refused with a message naming the file and tensor', async () => {
  const dir = tmp();
  const good = join(dir, 'good.safetensors');
  await writeSafetensors(good, new Map([['w', { dtype: 'F32', shape: [4], data: Float32Array.from([1, 2, NaN, 4]) }]]));
  const bytes = readFileSync(good);
  const hlen = Number(bytes.readBigUInt64LE(0));

  const truncated = join(dir, 'truncated.safetensors');
  writeFileSync(truncated, bytes.subarray(0, bytes.length - 4));
  assert.throws(() => new SafetensorsFile(truncated), /truncated\.safetensors: tensor w extends past the end of the file/);

  const lying = join(dir, 'lying.safetensors');
  const header = bytes
    .subarray(8, 8 + hlen)
    .toString()
    .replace('"shape":[4]', '"shape":[5]');
  const lb = Buffer.alloc(8);
  lb.writeBigUInt64LE(BigInt(header.length));
  writeFileSync(lying, Buffer.concat([lb, Buffer.from(header), bytes.subarray(8 + hlen)]));
  assert.throws(() => new SafetensorsFile(lying), /lying\.safetensors: tensor w header says 16 bytes but F32\[5\] needs 20/);

  const hugeHeader = join(dir, 'huge.safetensors');
  const hb = Buffer.from(bytes);
  hb.writeBigUInt64LE(10n ** 12n);
  writeFileSync(hugeHeader, hb);
  assert.throws(() => new SafetensorsFile(hugeHeader), /huge\.safetensors: corrupt safetensors header length/);

  writeFileSync(join(dir, 'tiny.safetensors'), Buffer.from([1, 2]));
  assert.throws(() => new SafetensorsFile(join(dir, 'tiny.safetensors')), /truncated safetensors file/);

  writeFileSync(join(dir, 'model.safetensors'), bytes);
  assert.throws(() => new SafetensorsModel(dir).readFloat('w', [4]), /model\.safetensors: tensor w contains NaN\/Inf at element 2/);
  assert.throws(() => new SafetensorsModel(dir).read('nope'), /missing tensor nope/);
});
