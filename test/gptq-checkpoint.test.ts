import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { calibrationWindows } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { evaluate } from '../src/eval/perplexity.js';
import { writeFakeQuant } from '../src/formats/fake-quant.js';
import { readGptqLinear, readQuantConfig, writeGptqCheckpoint } from '../src/formats/gptq.js';
import { SafetensorsFile, SafetensorsModel, writeSafetensors } from '../src/io/safetensors.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { quantizeModel, QUANTIZE_REFERENCE, type QuantizeOptions } from '../src/quant/quantize-model.js';
import { dequantize } from '../src/quant/quantized-layer.js';
import { quantize } from '../src/pipeline.js';
import { getBackend } from '../src/tensor/index.js';
import { tempDir } from './helpers/temp.js';

let model: string;
let windows: Int32Array;
let evalTokens: number[];
before(async () => {
  model = await pullStories15m();
  const tok = loadTokenizer(model);
  windows = calibrationWindows(tok.encode((await loadText('sotu-calib')).slice(0, 200_000)), 4, 256, 0);
  evalTokens = tok.encode((await loadText('sotu-test')).slice(0, 30_000));
});

const exportOpts = (o: QuantizeOptions, format: 'gptq' | 'gptq_v2', maxShardBytes = 2 ** 40) => ({
  format,
  floatDtype: 'F32' as const,
  maxShardBytes,
  quant: o,
});

const CASES: Partial<QuantizeOptions>[] = [
  { bits: 2, groupSize: 64, actOrder: true },
  { bits: 3, groupSize: -1, sym: true },
  { bits: 4, groupSize: 128, actOrder: true },
  { bits: 8, groupSize: 32, sym: true },
];

for (const c of CASES) {
  test(`export -> load round trip is exact: ${JSON.stringify(c)}`, async () => {
    const opts = { ...QUANTIZE_REFERENCE, ...c };
    const { layers } = await quantizeModel(model, await getBackend(), opts, { windows, seqlen: 256 });
    const dir = tempDir('rt-');
    await writeFakeQuant(model, join(dir, 'fake'), layers, {});
    const fake = (await loadModel(join(dir, 'fake'))).model;
    const want = await evaluate(fake, evalTokens, { windows: 4 });
    // v1 holds symmetric grids only (asymmetric ones are refused: see loaderCompatibility)
    for (const format of opts.sym ? (['gptq', 'gptq_v2'] as const) : (['gptq_v2'] as const)) {
      const out = join(dir, format);
      // a small shard limit also exercises sharded writing and reading
      await writeGptqCheckpoint(model, out, layers, exportOpts(opts, format, 8 << 20));
      assert.ok(existsSync(join(out, 'model.safetensors.index.json')));
      const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
      assert.equal(cfg.quantization_config.checkpoint_format, format);
      assert.equal(cfg.quantization_config.desc_act, Boolean(c.actOrder));
      const st = new SafetensorsModel(out);
      const qc = readQuantConfig(out, cfg)!;
      for (const [name, q] of layers) {
        assert.deepEqual(dequantize(readGptqLinear(st, name, q.rows, q.cols, qc)), dequantize(q), `${format} ${name}`);
      }
      st.close();
      // the loaded model runs on the packed kernels (float32 activations)
      const loaded = (await loadModel(out)).model;
      const got = await evaluate(loaded, evalTokens, { windows: 4 });
      assert.ok(Math.abs(got.ppl / want.ppl - 1) < 1e-4, `${format}: ppl ${got.ppl} vs fake-quant ${want.ppl}`);
    }
  });
}

const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', ...args], { encoding: 'utf8' });
function assertOneLineError(r: ReturnType<typeof cli>, pattern: RegExp): void {
  assert.notEqual(r.status, 0);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, pattern);
}

test('broken GPTQ checkpoints are refused with one line', async () => {
  const opts = { ...QUANTIZE_REFERENCE, bits: 4, groupSize: 128, sym: true };
  const { layers } = await quantizeModel(model, await getBackend(), { ...opts, method: 'rtn' }, undefined);
  const dir = tempDir('bad-');
  const good = join(dir, 'good');
  await writeGptqCheckpoint(model, good, layers, exportOpts(opts, 'gptq'));
  const variant = async (name: string, edit: (d: string) => Promise<void> | void): Promise<string> => {
    const d = join(dir, name);
    cpSync(good, d, { recursive: true });
    await edit(d);
    return d;
  };
  const rewrite = async (
    d: string,
    change: (name: string, t: ReturnType<SafetensorsFile['read']>) => ReturnType<SafetensorsFile['read']>,
  ) => {
    const f = new SafetensorsFile(join(d, 'model.safetensors'));
    const all = new Map([...f.tensors.keys()].map((n) => [n, change(n, f.read(n))]));
    f.close();
    rmSync(join(d, 'model.safetensors'));
    await writeSafetensors(join(d, 'model.safetensors'), all);
  };
  const editConfig = (d: string, f: (qc: Record<string, unknown>) => void): void => {
    const cfg = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
    f(cfg.quantization_config);
    writeFileSync(join(d, 'config.json'), JSON.stringify(cfg));
  };
  const qweight = 'model.layers.0.self_attn.q_proj.qweight';
  const badShape = await variant('shape', (d) => rewrite(d, (n, t) => (n === qweight ? { ...t, shape: [t.shape[1]!, t.shape[0]!] } : t)));
  assertOneLineError(
    cli('eval', badShape, '--windows', '1'),
    /q_proj\.qweight has shape \[288,36\] but the config \(bits 4, group_size 128\) implies \[36,288\]/,
  );
  const badGidx = await variant('gidx', (d) =>
    rewrite(d, (n, t) =>
      n === 'model.layers.1.mlp.down_proj.g_idx' ? { ...t, data: (t.data as Int32Array).map((g, i) => (i === 5 ? 99 : g)) } : t,
    ),
  );
  assertOneLineError(cli('eval', badGidx, '--windows', '1'), /down_proj\.g_idx\[5\] = 99 is outside 0\.\.5/);
  const badBits = await variant('bits', (d) => editConfig(d, (qc) => (qc['bits'] = 3)));
  assertOneLineError(
    cli('eval', badBits, '--windows', '1'),
    /qweight has shape \[36,288\] but the config \(bits 3, group_size 128\) implies \[27,288\]/,
  );
  const badFormat = await variant('format', (d) => editConfig(d, (qc) => (qc['checkpoint_format'] = 'marlin')));
  assertOneLineError(cli('eval', badFormat, '--windows', '1'), /unknown checkpoint_format "marlin"/);
  const badMethod = await variant('method', (d) => editConfig(d, (qc) => (qc['quant_method'] = 'awq')));
  assertOneLineError(cli('eval', badMethod, '--windows', '1'), /unsupported quant_method "awq"/);
  // settings that change what the tensors mean are refused by name (GPTQModel's newer keys and transformers')
  const refusals: [string, (qc: Record<string, unknown>) => void, RegExp][] = [
    ['alias', (qc) => (qc['format'] = 'gptq_v2'), /checkpoint_format "gptq" and format "gptq_v2" disagree/],
    ['marlin', (qc) => (qc['is_marlin_format'] = true), /is_marlin_format .* is not implemented/],
    ['pack', (qc) => (qc['pack_dtype'] = 'int16'), /pack_dtype "int16" is not implemented/],
    ['rotation', (qc) => (qc['rotation'] = 'hadamard'), /rotation "hadamard" .* is not implemented/],
    [
      'modules',
      (qc) => (qc['modules_in_block_to_quantize'] = [['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'], ['self_attn.o_proj']]),
      /modules_in_block_to_quantize leaves mlp\.gate_proj, mlp\.up_proj, mlp\.down_proj unquantized/,
    ],
  ];
  for (const [name, edit, message] of refusals)
    assertOneLineError(cli('eval', await variant(name, (d) => editConfig(d, edit)), '--windows', '1'), message);
  // the same settings under GPTQModel's newer key names, and a modules_in_block_to_quantize naming every layer, load
  const renamed = await variant('renamed', (d) =>
    editConfig(d, (qc) => {
      qc['method'] = qc['quant_method'];
      qc['format'] = qc['checkpoint_format'];
      delete qc['quant_method'];
      delete qc['checkpoint_format'];
      qc['pack_dtype'] = 'int32';
      qc['modules_in_block_to_quantize'] = [
        ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
        ['self_attn.o_proj'],
        ['mlp.gate_proj', 'mlp.up_proj'],
        ['mlp.down_proj'],
      ];
    }),
  );
  const asWritten = cli('eval', good, '--windows', '1', '--json');
  const asRenamed = cli('eval', renamed, '--windows', '1', '--json');
  assert.equal(asRenamed.status, 0, asRenamed.stderr);
  assert.equal(JSON.parse(asRenamed.stdout).ppl, JSON.parse(asWritten.stdout).ppl);
});

test('a float tensor beyond float16 is refused before any quantization, and kept whole with --dtype float32', async () => {
  const parent = tempDir('range-');
  const src = join(parent, 'src');
  cpSync(model, src, { recursive: true });
  const file = join(src, 'model.safetensors');
  const f = new SafetensorsFile(file);
  const all = new Map([...f.tensors.keys()].map((n) => [n, f.read(n)]));
  f.close();
  // 65504 is float16's largest value; 65520 and above round to Inf
  const norm = all.get('model.norm.weight')!.data as Float32Array;
  norm[3] = 65504;
  norm[5] = 70000;
  rmSync(file);
  await writeSafetensors(file, all);
  const out = join(parent, 'half');
  const r = cli('quantize', src, '--method', 'rtn', '--out', out);
  assert.notEqual(r.status, 0);
  assert.match(
    r.stderr.trim(),
    /^gptq: error: .*src: model\.norm\.weight: element 5 \(70000\) is beyond float16's range \(±65504\); keep the float tensors float32 \(--dtype float32\)$/,
  );
  assert.deepEqual(readdirSync(parent), ['src']);
  // refused before any block was quantized, not after hours of work
  let blocks = 0;
  await assert.rejects(quantize(src, { method: 'rtn' }, out, { onBlock: () => blocks++ }), /model\.norm\.weight: element 5/);
  assert.equal(blocks, 0);
  const kept = join(parent, 'f32');
  const k = cli('quantize', src, '--method', 'rtn', '--dtype', 'float32', '--out', kept);
  assert.equal(k.status, 0, k.stderr);
  const w = new SafetensorsFile(join(kept, 'model.safetensors')).read('model.norm.weight').data as Float32Array;
  assert.deepEqual([w[3], w[5]], [65504, 70000]);
  // a NaN is named as one, also before any work
  norm[5] = NaN;
  rmSync(file);
  await writeSafetensors(file, all);
  await assert.rejects(
    quantize(src, { method: 'rtn' }, join(parent, 'nan'), { onBlock: () => blocks++ }),
    /model\.norm\.weight: contains NaN\/Inf at element 5$/,
  );
  assert.equal(blocks, 0);
});

test('quantize --format gptq writes the ecosystem layout', () => {
  const parent = tempDir('fmt-');
  const out = join(parent, 'm');
  const r = cli('quantize', model, '--method', 'rtn', '--bits', '4', '--group-size', '128', '--out', out);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(readdirSync(parent), ['m']);
  for (const f of ['config.json', 'quantize_config.json', 'tokenizer.json', 'model.safetensors']) assert.ok(existsSync(join(out, f)), f);
  const st = new SafetensorsFile(join(out, 'model.safetensors'));
  const t = (n: string) => st.tensors.get(n)!;
  assert.deepEqual([t('model.layers.0.mlp.down_proj.qweight').dtype, t('model.layers.0.mlp.down_proj.qweight').shape], ['I32', [96, 288]]);
  assert.deepEqual(t('model.layers.0.mlp.down_proj.qzeros').shape, [6, 36]);
  assert.deepEqual([t('model.layers.0.mlp.down_proj.scales').dtype, t('model.layers.0.mlp.down_proj.scales').shape], ['F16', [6, 288]]);
  assert.deepEqual(t('model.layers.0.mlp.down_proj.g_idx').shape, [768]);
  assert.equal(t('model.embed_tokens.weight').dtype, 'F16');
  assert.equal(st.tensors.has('model.layers.0.mlp.down_proj.weight'), false);
  const inspected = JSON.parse(cli('inspect', out, '--json').stdout);
  const float = JSON.parse(cli('inspect', model, '--json').stdout);
  assert.equal(inspected.totalParams, float.totalParams);
  // every linear: 4-bit codes, per (group, row) an fp16 scale and a 4-bit zero, per column a 32-bit g_idx
  let bits = 0;
  let params = 0;
  for (const [rows, cols] of [
    [288, 288],
    [288, 288],
    [288, 288],
    [288, 288],
    [768, 288],
    [768, 288],
    [288, 768],
  ] as [number, number][]) {
    const groups = Math.ceil(cols / 128);
    bits += 6 * (4 * rows * cols + (16 + 4) * groups * rows + 32 * cols);
    params += 6 * rows * cols;
  }
  assert.ok(Math.abs(inspected.bitsPerWeight - bits / params) < 1e-9, `${inspected.bitsPerWeight} vs ${bits / params}`);
  assert.equal(inspected.quantization.bits, 4);
  const qc = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).quantization_config;
  assert.deepEqual(
    { ...qc },
    {
      quant_method: 'gptq',
      bits: 4,
      group_size: 128,
      desc_act: false,
      sym: true,
      damp_percent: 0.01,
      true_sequential: true,
      static_groups: false,
      checkpoint_format: 'gptq',
      model_file_base_name: 'model',
      lm_head: false,
    },
  );
});
