import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { loadText } from '../src/calib/datasets.js';
import { calibrationWindows } from '../src/calib/windows.js';
import { evaluate, referenceStates } from '../src/eval/perplexity.js';
import { SafetensorsModel } from '../src/io/safetensors.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { Decoder, layerPrefix, linearGroups, type PreparedBlock } from '../src/models/index.js';
import { quantize } from '../src/pipeline.js';
import { gptq, prepareHessian } from '../src/quant/gptq.js';
import { quantizeHead } from '../src/quant/head-stage.js';
import { QUANTIZE_REFERENCE, quantizeModel, type QuantizeOptions } from '../src/quant/quantize-model.js';
import { dequantize, type QuantizedLayer } from '../src/quant/quantized-layer.js';
import { RowFile } from '../src/quant/run-state.js';
import { getBackend } from '../src/tensor/index.js';
import { openGgufModel } from '../src/models/gguf-import.js';
import { writeByteTokenizer } from './helpers/byte-tokenizer.js';
import { tempDir } from './helpers/temp.js';

/*
 * --lm-head (GPTQModel's lm_head: true) on the untied Llama fixture (vocabulary 256, head 256 x 64): the head is
 * swept by GPTQ on the Hessian of the final states the quantized model gives it, written packed, read back as a
 * kernel, and evaluated and generated from; a head that cannot be quantized is refused by name.
 */
const FIXTURE = join(import.meta.dirname, 'fixtures/families/llama');
const OPTS: QuantizeOptions = { ...QUANTIZE_REFERENCE, bits: 4, groupSize: 32, sym: true, lmHead: true };
const SEQLEN = 32;
const NSEQ = 8;

let model: string;
let windows: Int32Array;
before(async () => {
  model = join(tempDir('lm-head-'), 'llama');
  cpSync(FIXTURE, model, { recursive: true });
  writeByteTokenizer(model);
  windows = calibrationWindows(loadTokenizer(model).encode(await loadText('sotu-calib')), NSEQ, SEQLEN, 0);
});

/** Rows [rows, width] written to a new row file in `dir`, as the quantizer keeps the last block's outputs. */
async function rowFile(dir: string, name: string, width: number, rows: Float32Array): Promise<RowFile> {
  const f = new RowFile(join(dir, name), width, 'create');
  await f.write(0, rows);
  return f;
}

/**
 * The last block's outputs for the windows, through a float decoder whose linear layers are the quantized ones
 * (the float model's own without `layers`).
 */
async function lastBlockRows(layers?: ReadonlyMap<string, QuantizedLayer>): Promise<{ dec: Decoder; x: Float32Array }> {
  const dec = await Decoder.load(FIXTURE, await getBackend());
  if (layers)
    dec.blocks.forEach((b, l) => {
      for (const name of linearGroups(dec.cfg).flat()) b.linear[name] = dequantize(layers.get(`${layerPrefix(dec.cfg, l)}${name}.weight`)!);
    });
  const x = await dec.embedTokens(windows, SEQLEN);
  for (let l = 0; l < dec.blocks.length; l++) await dec.block(dec.blocks[l]!, l, x, NSEQ, SEQLEN);
  return { dec, x };
}

test("GPTQ's head: the Hessian of the quantized model's final states (2/n·Σ hhᵀ), swept as any layer, in row slices or whole", async () => {
  const backend = await getBackend();
  let seen: { h: Float64Array; w: Float32Array; q: QuantizedLayer } | undefined;
  const r = await quantizeModel(FIXTURE, backend, OPTS, { windows, seqlen: SEQLEN }, undefined, undefined, (name, w, h, q) => {
    if (name === 'lm_head.weight') seen = { h: h!, w, q };
  });
  assert.ok(seen, 'the head went through the quantizer');
  assert.equal(r.reports.at(-1)!.name, 'lm_head.weight');
  assert.ok(r.timings.head && r.timings.head.hessian > 0);
  assert.equal(r.layers.get('lm_head.weight'), seen.q);

  // independently: the final states of a float decoder carrying the quantized blocks
  const { dec, x } = await lastBlockRows(r.layers);
  const E = dec.cfg.embedDim;
  const rows = NSEQ * SEQLEN;
  const h = await dec.final(x.slice(), rows);
  const want = new Float64Array(E * E);
  for (let t = 0; t < rows; t++)
    for (let i = 0; i < E; i++) for (let j = 0; j < E; j++) want[i * E + j]! += (2 / NSEQ) * h[t * E + i]! * h[t * E + j]!;
  const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  seen.h.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) <= 1e-5 * scale, `H[${i}]: ${v} vs ${want[i]}`));

  // the head is GPTQ of the stored weights on that Hessian (on the backend's products, as every layer)
  const prepared = await prepareHessian(seen.h, E, OPTS, undefined, undefined, backend.matmul64.bind(backend));
  const products = { matmulNT: backend.matmulNT.bind(backend), matmulNN: backend.matmulNN.bind(backend) };
  const direct = await gptq(seen.w, seen.h, dec.cfg.vocabSize, E, OPTS, { prepared, ...products });
  assert.deepEqual(seen.q.codes, direct.layer.codes);
  assert.deepEqual(seen.q.scales, direct.layer.scales);
  assert.ok(Math.abs(r.reports.at(-1)!.loss! - direct.loss) <= 1e-9 * direct.loss, `loss ${r.reports.at(-1)!.loss} vs ${direct.loss}`);

  // rows are independent given H: 100-row slices (three, the last partial) give the same layer
  const dir = tempDir('lm-head-rows-');
  const file = await rowFile(dir, 'final.f32', dec.cfg.hiddenSize, x);
  const st = new SafetensorsModel(FIXTURE);
  try {
    const final = { files: [file], windows: NSEQ, seqlen: SEQLEN, chunk: 3 };
    const whole = await quantizeHead(st, dec.cfg, backend, OPTS, final, () => {});
    const sliced = await quantizeHead(st, dec.cfg, backend, OPTS, final, () => {}, undefined, 100 * E);
    for (const k of ['codes', 'scales', 'zeros', 'gIdx'] as const) assert.deepEqual(sliced.layer[k], whole.layer[k], k);
    assert.equal(sliced.layer.rows, 256);
    assert.ok(Math.abs(sliced.report.loss! - whole.report.loss!) <= 1e-9 * whole.report.loss!);
  } finally {
    st.close();
    await file.close();
  }
});

test('a GPTQ checkpoint with lm_head: packed head tensors, lm_head true, read back as a kernel that evaluates and generates as the dequantized head', async () => {
  const root = tempDir('lm-head-out-');
  const settings = { ...OPTS, nsamples: NSEQ, seqlen: SEQLEN, data: 'sotu-calib', floatDtype: 'F32' as const };
  const warnings: string[] = [];
  await quantize(model, { ...settings, format: 'gptq' }, join(root, 'gptq'), { warn: (m) => warnings.push(m) });
  await quantize(model, { ...settings, format: 'fake' }, join(root, 'fake'));
  assert.ok(
    warnings.some((w) => /transformers .* lm_head/.test(w)),
    warnings.join('\n'),
  );

  const config = JSON.parse(readFileSync(join(root, 'gptq', 'config.json'), 'utf8'));
  assert.equal(config.quantization_config.lm_head, true);
  const st = new SafetensorsModel(join(root, 'gptq'));
  try {
    for (const t of ['qweight', 'qzeros', 'scales', 'g_idx']) assert.ok(st.has(`lm_head.${t}`), t);
    assert.ok(!st.has('lm_head.weight'));
    assert.deepEqual(st.info('lm_head.qweight').shape, [(64 * 4) / 32, 256]);
  } finally {
    st.close();
  }
  writeByteTokenizer(join(root, 'gptq'));
  writeByteTokenizer(join(root, 'fake'));
  const packed = (await loadModel(join(root, 'gptq'))).model;
  const fake = (await loadModel(join(root, 'fake'))).model;
  const float = (await loadModel(model)).model;
  assert.ok(packed.outer.headKernel, 'the head is a packed kernel');
  assert.equal(fake.outer.headKernel, undefined);

  // logits of one row (generation's path) and of many
  const tokens = loadTokenizer(model).encode(await loadText('sotu-test'));
  const ids = Int32Array.from(tokens.slice(0, 2 * SEQLEN));
  const hp = await packed.hidden(ids, 2, SEQLEN);
  const hf = await fake.hidden(ids, 2, SEQLEN);
  for (const n of [1, 2 * SEQLEN]) {
    const a = await packed.logits(hp.subarray(0, n * 64), n);
    const b = await fake.logits(hf.subarray(0, n * 64), n);
    const scale = b.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) <= 1e-4 * scale, `${n} rows, logit ${i}: ${v} vs ${b[i]}`));
  }

  // perplexity, and KL against the float model's states (the reference's head float, then quantized)
  const opts = { windows: 6, seqlen: SEQLEN };
  const ref = await referenceStates(float, tokens, opts);
  const [p, f] = [await evaluate(packed, tokens, { ...opts, ref }), await evaluate(fake, tokens, { ...opts, ref })];
  assert.ok(Math.abs(p.meanNll - f.meanNll) <= 1e-5 * f.meanNll, `${p.meanNll} vs ${f.meanNll}`);
  assert.ok(Math.abs(p.kl! - f.kl!) <= 1e-3 * f.kl! && f.kl! > 0, `KL ${p.kl} vs ${f.kl}`);
  const self = await evaluate(fake, tokens, { ...opts, ref: await referenceStates(packed, tokens, opts) });
  assert.ok(self.kl! < 1e-3 * f.kl! && self.top1! > 0.99, `KL(packed || fake) ${self.kl}, top-1 ${self.top1}`);
});

test('--lm-head-bits 8: an 8-bit head beside 4-bit blocks, written as a dynamic rule for lm_head, read back at its own bits', async () => {
  const root = tempDir('lm-head-bits-');
  const settings = { ...OPTS, method: 'rtn' as const, floatDtype: 'F32' as const };
  await quantize(model, { ...settings, format: 'gptq', lmHeadBits: 8 }, join(root, 'h8'));
  await quantize(model, { ...settings, format: 'fake', lmHeadBits: 8 }, join(root, 'fake'));
  await quantize(model, { ...settings, format: 'gptq' }, join(root, 'h4'));
  const config = JSON.parse(readFileSync(join(root, 'h8', 'config.json'), 'utf8'));
  assert.equal(config.quantization_config.bits, 4);
  assert.deepEqual(config.quantization_config.dynamic, { '+:lm_head$': { bits: 8 } });
  assert.deepEqual(JSON.parse(readFileSync(join(root, 'h8', 'quantize_config.json'), 'utf8')).dynamic, { '+:lm_head$': { bits: 8 } });
  assert.equal(JSON.parse(readFileSync(join(root, 'h4', 'config.json'), 'utf8')).quantization_config.dynamic, undefined);
  const st = new SafetensorsModel(join(root, 'h8'));
  try {
    assert.deepEqual(st.info('lm_head.qweight').shape, [(64 * 8) / 32, 256]);
    assert.deepEqual(st.info('lm_head.qzeros').shape, [2, (256 * 8) / 32]);
    assert.deepEqual(st.info('model.layers.0.mlp.down_proj.qweight').shape, [(128 * 4) / 32, 64]);
  } finally {
    st.close();
  }
  for (const d of ['h8', 'fake', 'h4']) writeByteTokenizer(join(root, d));
  const load = async (d: string): Promise<Decoder<PreparedBlock>> => (await loadModel(join(root, d))).model;
  const [h8, fake, h4] = [await load('h8'), await load('fake'), await load('h4')];
  const float = (await loadModel(model)).model;
  // the packed 8-bit head gives the dequantized model's logits
  const tokens = loadTokenizer(model).encode(await loadText('sotu-test'));
  const ids = Int32Array.from(tokens.slice(0, SEQLEN));
  const [a, b] = [await h8.logits(await h8.hidden(ids, 1, SEQLEN), SEQLEN), await fake.logits(await fake.hidden(ids, 1, SEQLEN), SEQLEN)];
  const scale = b.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  a.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) <= 1e-4 * scale, `logit ${i}: ${v} vs ${b[i]}`));
  // and is closer to the float model than the 4-bit head
  const opts = { windows: 6, seqlen: SEQLEN };
  const ref = await referenceStates(float, tokens, opts);
  const [k8, k4] = [(await evaluate(h8, tokens, { ...opts, ref })).kl!, (await evaluate(h4, tokens, { ...opts, ref })).kl!];
  assert.ok(k8 < k4, `KL with the 8-bit head ${k8}, with the 4-bit head ${k4}`);
  await assert.rejects(quantize(model, { ...settings, lmHead: false, lmHeadBits: 8 }), /--lm-head-bits needs --lm-head/);
  await assert.rejects(quantize(model, { ...settings, lmHeadBits: 5 }), /--lm-head-bits 5 is not one of 2, 3, 4, 8/);
  await assert.rejects(quantize(model, { ...settings, format: 'gguf', lmHeadBits: 8 }), /--format gguf: --lm-head-bits/);
});

test('--lm-head refusals: a tied head, GPTQT, a --gguf-type mix; a checkpoint whose lm_head or dynamic settings cannot be read', async () => {
  const backend = await getBackend();
  const tied = join(import.meta.dirname, 'fixtures/families/llama-tied');
  await assert.rejects(quantizeModel(tied, backend, { ...OPTS, method: 'rtn' }, undefined), /--lm-head: tie_word_embeddings is true/);
  await assert.rejects(
    quantizeModel(FIXTURE, backend, { ...OPTS, method: 'gptqt', bits: 2, groupSize: -1 }, undefined),
    /--lm-head: --method gptqt/,
  );
  await assert.rejects(
    quantizeModel(FIXTURE, backend, { ...OPTS, method: 'rtn', blockType: 'Q4_K' }, undefined),
    /--lm-head: a GGUF's output/,
  );

  const out = join(tempDir('lm-head-lies-'), 'gptq');
  await quantize(model, { ...OPTS, method: 'rtn', floatDtype: 'F32' }, out);
  assert.ok(existsSync(join(out, 'model.safetensors')));
  const edit = (f: (qc: Record<string, unknown>) => void): void => {
    for (const file of ['config.json', 'quantize_config.json']) {
      const c = JSON.parse(readFileSync(join(out, file), 'utf8'));
      f(file === 'config.json' ? c.quantization_config : c);
      writeFileSync(join(out, file), JSON.stringify(c));
    }
  };
  edit((qc) => (qc['lm_head'] = 'yes'));
  await assert.rejects(loadModel(out), /lm_head "yes" is not true or false/);
  edit((qc) => (qc['lm_head'] = false));
  await assert.rejects(loadModel(out), /holds GPTQ tensors \(lm_head\.qweight\)|tensor lm_head\.qweight/);
  // `dynamic` (GPTQModel's per-module rules): a rule the tensors contradict, and rules we cannot read, by name
  const rejects = async (dynamic: unknown, why: RegExp): Promise<void> => {
    edit((qc) => {
      qc['lm_head'] = true;
      qc['dynamic'] = dynamic;
    });
    await assert.rejects(loadModel(out), why);
  };
  await rejects(
    { lm_head: { bits: 8 } },
    /lm_head\.qweight has shape \[8,256\] but the config \(bits 8, group_size 32\) implies \[16,256\]/,
  );
  await rejects({ '+:.*down_proj': { group_size: 16 } }, /down_proj\.qweight|down_proj\.qzeros|down_proj\.scales/);
  await rejects(
    { '-:model\\.layers\\.1\\..*': {} },
    /dynamic -:model\\\.layers\\\.1\\\.\.\* leaves model\.layers\.1\.self_attn\.q_proj unquantized/,
  );
  await rejects({ '+:(?P<name>lm_head)': { bits: 4 } }, /dynamic pattern "\+:\(\?P<name>lm_head\)" uses Python-only regex syntax/);
  await rejects({ '+:lm_head(': { bits: 4 } }, /dynamic pattern "\+:lm_head\(" is not a regular expression/);
  await rejects({ lm_head: { bits: 5 } }, /dynamic "lm_head": bits 5 is not valid/);
  await rejects({ lm_head: { adapter: { rank: 8 } } }, /dynamic "lm_head": the override adapter is not implemented/);
  await rejects([{ lm_head: { bits: 8 } }], /dynamic .* is not an object of module patterns/);
  // settings that only steered the quantizer, and a rule matching nothing, change nothing
  edit((qc) => (qc['dynamic'] = { lm_head: { damp_percent: 0.05 }, 'model\\.nothing': { bits: 8 } }));
  assert.ok((await loadModel(out)).model.outer.headKernel);
  edit((qc) => delete qc['dynamic']);
  const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
  writeFileSync(join(out, 'config.json'), JSON.stringify({ ...config, tie_word_embeddings: true }));
  await assert.rejects(loadModel(out), /lm_head true but tie_word_embeddings is true/);
});

test('--format gguf --lm-head: output.weight as Q4_0, read back as a packed head giving the GPTQ checkpoint logits', async () => {
  const root = tempDir('lm-head-gguf-');
  const rtn = { ...OPTS, method: 'rtn' as const, floatDtype: 'F32' as const };
  await quantize(model, { ...rtn, format: 'gguf' }, join(root, 'm.gguf'));
  await quantize(model, { ...rtn, format: 'gptq' }, join(root, 'gptq'));
  writeByteTokenizer(join(root, 'gptq'));
  const g = openGgufModel(join(root, 'm.gguf'));
  try {
    assert.equal(g.file.info('output.weight').typeName, 'Q4_0');
  } finally {
    g.tensors.close();
  }
  const gguf = (await loadModel(join(root, 'm.gguf'))).model;
  const gptqModel = (await loadModel(join(root, 'gptq'))).model;
  assert.ok(gguf.outer.headKernel && gptqModel.outer.headKernel);
  const ids = Int32Array.from(loadTokenizer(model).encode('The state of the union is strong.').slice(0, 16));
  const [a, b] = [await gguf.hidden(ids, 1, ids.length), await gptqModel.hidden(ids, 1, ids.length)];
  const [za, zb] = [await gguf.logits(a, ids.length), await gptqModel.logits(b, ids.length)];
  const scale = zb.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  za.forEach((v, i) => assert.ok(Math.abs(v - zb[i]!) <= 1e-4 * scale, `logit ${i}: ${v} vs ${zb[i]}`));
});

test('gptq quantize --lm-head: the flag reaches the checkpoint; on a tied model it is refused in one line', () => {
  const cli = (...a: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'quantize', ...a], {
      encoding: 'utf8',
      cwd: join(import.meta.dirname, '..'),
    });
  const out = join(tempDir('lm-head-cli-'), 'q');
  const ok = cli(model, '--lm-head', '--method', 'rtn', '--group-size', '32', '--out', out);
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).quantization_config.lm_head, true);
  const tied = cli(
    join(import.meta.dirname, 'fixtures/families/llama-tied'),
    '--lm-head',
    '--method',
    'rtn',
    '--group-size',
    '32',
    '--json',
  );
  assert.notEqual(tied.status, 0);
  assert.match(
    tied.stderr.trim(),
    /^gptq: error: --lm-head: tie_word_embeddings is true: the head is the embedding table, which stays float$/,
  );
});

test('a --resume run stopped after its last block quantizes the head from the kept final states: the same bytes', async () => {
  const root = tempDir('lm-head-resume-');
  const settings = { ...OPTS, nsamples: NSEQ, seqlen: SEQLEN, data: 'sotu-calib' };
  await quantize(model, settings, join(root, 'whole'));
  const stop = new Error('stopped');
  const last = (l: number): void => {
    if (l === 1) throw stop;
  };
  await assert.rejects(quantize(model, settings, join(root, 'resumed'), { resume: true, onBlock: last }), (e) => e === stop);
  assert.ok(existsSync(join(root, '.resumed.partial', 'hidden-0-2.f32')), 'the final states are kept for the head');
  await quantize(model, settings, join(root, 'resumed'), { resume: true });
  for (const f of ['model.safetensors', 'config.json'])
    assert.ok(readFileSync(join(root, 'resumed', f)).equals(readFileSync(join(root, 'whole', f))), f);
});

test('GPTQv2 --lm-head: the head is calibrated against the full-precision final states as well', async () => {
  const backend = await getBackend();
  const v2opts = { ...OPTS, sym: false, method: 'gptqv2' as const };
  const r = await quantizeModel(FIXTURE, backend, v2opts, { windows, seqlen: SEQLEN });
  assert.equal(r.reports.at(-1)!.name, 'lm_head.weight');
  // the head stage on the two streams' rows: the quantized blocks' and the float model's last outputs
  const { dec, x } = await lastBlockRows(r.layers);
  const xfp = (await lastBlockRows()).x;
  const dir = tempDir('lm-head-v2-');
  const D = dec.cfg.hiddenSize;
  const files = [await rowFile(dir, 'q.f32', D, x), await rowFile(dir, 'fp.f32', D, xfp), await rowFile(dir, 'q2.f32', D, x)];
  const st = new SafetensorsModel(FIXTURE);
  try {
    const head = (f: RowFile[], o: QuantizeOptions) =>
      quantizeHead(st, dec.cfg, backend, o, { files: f, windows: NSEQ, seqlen: SEQLEN, chunk: 3 }, () => {});
    const withFp = await head([files[0]!, files[1]!], v2opts);
    assert.deepEqual(withFp.layer.codes, r.layers.get('lm_head.weight')!.codes, "the pipeline's head is this one");
    // with the quantized rows as their own reference there is nothing to correct: GPTQ's head exactly
    const same = await head([files[0]!, files[2]!], v2opts);
    const plain = await head([files[0]!], { ...v2opts, method: 'gptq' });
    assert.deepEqual(same.layer.codes, plain.layer.codes);
    const differ = withFp.layer.codes.reduce((n, c, i) => n + (c !== plain.layer.codes[i] ? 1 : 0), 0);
    assert.ok(differ > 0, 'the full-precision stream changes the head');
  } finally {
    st.close();
    for (const f of files) await f.close();
  }
});
