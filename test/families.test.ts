import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { evaluate } from '../src/eval/perplexity.js';
import { writeByteTokenizer } from './helpers/byte-tokenizer.js';
import { Decoder, SUPPORTED_MODEL_TYPES } from '../src/models/index.js';
import { getBackend } from '../src/tensor/index.js';
import { tempDir } from './helpers/temp.js';

/**
 * Tiny random-weight checkpoints of each family with transformers' own logits (scripts/families/make_fixtures.py;
 * test/fixtures/families/README.md): our forward must give the same logits.
 */
const ROOT = join(import.meta.dirname, 'fixtures/families');
const FIXTURES = readdirSync(ROOT).filter((d) => existsSync(join(ROOT, d, 'golden.json')));

interface Golden {
  input_ids: number[][];
  logits_shape: [number, number, number];
  model_type: string;
  nll: number;
}

for (const name of FIXTURES) {
  const dir = join(ROOT, name);
  const golden = JSON.parse(readFileSync(join(dir, 'golden.json'), 'utf8')) as Golden;
  if (!SUPPORTED_MODEL_TYPES.includes(golden.model_type)) continue;
  test(`${name}: logits equal transformers' within 1e-4`, async () => {
    const model = await Decoder.load(dir, await getBackend());
    const [batch, seq, vocab] = golden.logits_shape;
    const want = new Float32Array(readFileSync(join(dir, 'logits.f32')).buffer.slice(0));
    const h = await model.hidden(golden.input_ids.flat(), batch, seq);
    const got = await model.logits(h, batch * seq);
    assert.equal(got.length, want.length);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
    assert.ok(worst < 1e-4, `max |Δlogit| ${worst.toExponential(2)} over ${batch}x${seq}x${vocab}`);
    // the perplexity path (its own head statistics, Gemma 2's capped logits) gives transformers' mean NLL
    if (seq <= model.cfg.maxPositions) {
      const r = await evaluate(model, golden.input_ids.flat(), { windows: batch, seqlen: seq });
      assert.ok(Math.abs(r.meanNll - golden.nll) < 1e-5, `mean NLL ${r.meanNll} vs transformers ${golden.nll}`);
    }
  });
}

test("every family fixture, opened streamed (over the loaded-size limit), evaluates to its held model's NLL exactly and to transformers'", async () => {
  const { loadModel } = await import('../src/models/load.js');
  const { cpSync } = await import('node:fs');
  for (const name of FIXTURES) {
    const golden = JSON.parse(readFileSync(join(ROOT, name, 'golden.json'), 'utf8')) as Golden;
    const [batch, seq] = golden.logits_shape;
    const dir = join(tempDir(`stream-${name}-`), 'model');
    cpSync(join(ROOT, name), dir, { recursive: true });
    writeByteTokenizer(dir);
    const held = (await loadModel(dir)).model;
    if (seq > held.cfg.maxPositions) continue;
    process.env['GPTQ_TS_MAX_LOADED_GB'] = '0';
    let opened;
    try {
      opened = await loadModel(dir, { stream: true });
    } finally {
      delete process.env['GPTQ_TS_MAX_LOADED_GB'];
    }
    const { model, stream } = opened;
    assert.ok(stream && model.blocks.length === 0, name);
    try {
      // one window a batch: the streamed forward runs every window through a block before the next
      const plan = { windows: batch, seqlen: seq, batch: 1 };
      const r = await evaluate(model, golden.input_ids.flat(), { ...plan, stream });
      assert.equal(r.meanNll, (await evaluate(held, golden.input_ids.flat(), plan)).meanNll, name);
      assert.ok(Math.abs(r.meanNll - golden.nll) < 1e-5, `${name}: mean NLL ${r.meanNll} vs transformers ${golden.nll}`);
    } finally {
      stream.close();
    }
  }
});

test('every fixture is a supported family: none is skipped above', () => {
  const types = FIXTURES.map((n) => (JSON.parse(readFileSync(join(ROOT, n, 'golden.json'), 'utf8')) as Golden).model_type);
  assert.deepEqual(
    types.filter((t) => !SUPPORTED_MODEL_TYPES.includes(t)),
    [],
  );
  assert.deepEqual([...new Set(types)].sort(), [...SUPPORTED_MODEL_TYPES].sort());
});

test('every family quantizes with each method (GPTQ, act-order GPTQv2, RTN), exports as GPTQ v1/v2, and reloads to the same logits on packed kernels', async () => {
  const backend = await getBackend();
  const { quantizeModel, QUANTIZE_REFERENCE } = await import('../src/quant/quantize-model.js');
  const { writeGptqCheckpoint } = await import('../src/formats/gptq.js');
  const { writeFakeQuant } = await import('../src/formats/fake-quant.js');
  const { loadModel } = await import('../src/models/load.js');
  const { seededRandom } = await import('../src/calib/windows.js');
  const methods = [
    { method: 'gptq', sym: true, actOrder: false },
    { method: 'gptqv2', sym: false, actOrder: true },
    { method: 'rtn', sym: false, actOrder: false },
  ] as const;
  const seen = new Set<string>();
  for (const name of FIXTURES) {
    const dir = join(ROOT, name);
    const golden = JSON.parse(readFileSync(join(dir, 'golden.json'), 'utf8')) as Golden;
    if (!SUPPORTED_MODEL_TYPES.includes(golden.model_type) || seen.has(golden.model_type)) continue;
    seen.add(golden.model_type);
    const rand = seededRandom(7);
    const seqlen = 24;
    const windows = Int32Array.from({ length: 8 * seqlen }, () => Math.floor(rand() * golden.logits_shape[2]));
    const [batch, seq] = golden.logits_shape;
    const logitsOf = async (d: string): Promise<Float32Array> => {
      // loadModel also loads a tokenizer; these fixtures have none, and the ids below need none
      writeByteTokenizer(d);
      const { model } = await loadModel(d);
      return model.logits(await model.hidden(golden.input_ids.flat(), batch, seq), batch * seq);
    };
    const float = new Float32Array(readFileSync(join(dir, 'logits.f32')).buffer.slice(0));
    for (const m of methods) {
      const opts = { ...QUANTIZE_REFERENCE, bits: 4, groupSize: 32, ...m };
      const { layers } = await quantizeModel(dir, backend, opts, m.method === 'rtn' ? undefined : { windows, seqlen });
      const out = tempDir(`fam-${name}-`);
      await writeFakeQuant(dir, join(out, 'fake'), layers, {});
      const fake = await logitsOf(join(out, 'fake'));
      const moved = fake.reduce((acc, v, i) => Math.max(acc, Math.abs(v - float[i]!)), 0);
      assert.ok(moved > 1e-3, `${name} ${m.method}: quantization changed the logits (${moved})`);
      // v1 holds symmetric grids only
      for (const format of m.sym ? (['gptq', 'gptq_v2'] as const) : (['gptq_v2'] as const)) {
        await writeGptqCheckpoint(dir, join(out, format), layers, { format, floatDtype: 'F32', maxShardBytes: 2 ** 40, quant: opts });
        const packed = await logitsOf(join(out, format));
        const worst = packed.reduce((acc, v, i) => Math.max(acc, Math.abs(v - fake[i]!)), 0);
        assert.ok(worst < 1e-3, `${name} ${m.method} ${format}: packed vs dequantized max |Δlogit| ${worst}`);
      }
    }
  }
  assert.deepEqual([...seen].sort(), [...SUPPORTED_MODEL_TYPES].sort());
});

test('config fields that would change the arithmetic and are not implemented are refused by name', async () => {
  const { parseModelConfig } = await import('../src/models/index.js');
  const base = JSON.parse(readFileSync(join(ROOT, 'llama', 'config.json'), 'utf8')) as Record<string, unknown>;
  const parse =
    (edit: Record<string, unknown>, over: Record<string, unknown> = base) =>
    () =>
      parseModelConfig({ ...over, ...edit }, 'x/config.json');
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ attn_logit_softcapping: 50 }, /x\/config\.json: attn_logit_softcapping=50: not implemented for model_type "llama"/],
    [{ hidden_act: 'swiglu_oai' }, /hidden_act "swiglu_oai" is not supported/],
    [{ rope_parameters: { rope_type: 'mrope', rope_theta: 1e4 } }, /rope type "mrope" is not supported/],
    [
      { rope_parameters: { rope_type: 'linear', rope_theta: 1e4, factor: 2, mrope_section: [1] } },
      /rope linear parameter mrope_section=\[1\] is not supported/,
    ],
    [{ rope_parameters: { rope_type: 'llama3', rope_theta: 1e4, factor: 8 } }, /rope llama3 needs a number low_freq_factor/],
    [{ num_key_value_heads: 3 }, /num_attention_heads 4 is not divisible by num_key_value_heads 3/],
    [{ partial_rotary_factor: 0.5 }, /a partial_rotary_factor \(8 of 16 dimensions rotated\) is not supported/],
    [{ partial_rotary_factor: 0.3 }, /a partial_rotary_factor \(4 of 16 dimensions rotated\)/],
    [{ model_type: 'mixtral' }, /unsupported model_type "mixtral"/],
    [{ eos_token_id: 'two' }, /eos_token_id must be a token id or a list/],
  ];
  for (const [edit, pattern] of cases) assert.throws(parse(edit), pattern, JSON.stringify(edit));
  // Mistral has no biases: attention_bias is not one of its fields
  const mistral = JSON.parse(readFileSync(join(ROOT, 'mistral', 'config.json'), 'utf8')) as Record<string, unknown>;
  assert.throws(parse({ attention_bias: true }, mistral), /attention_bias=true: not implemented for model_type "mistral"/);
  assert.throws(
    parse({ layer_types: ['full_attention'] }, mistral),
    /layer_types must list sliding_attention or full_attention for each of the 2 layers/,
  );
  // Mistral v0.2+ and Phi-3 write sliding_window null: full attention on every layer
  const full = parseModelConfig({ ...mistral, sliding_window: null }, 'x');
  assert.deepEqual(
    [0, 1].map((l) => full.slidingWindow(l)),
    [undefined, undefined],
  );
  assert.deepEqual(
    [0, 1].map((l) => parseModelConfig(mistral, 'x').slidingWindow(l)),
    [16, 16],
  );
  // what is honoured: end-of-sequence lists, both RoPE layouts, null as "not set"
  const cfg = parseModelConfig({ ...base, eos_token_id: [2, 7], rope_scaling: null }, 'x');
  assert.deepEqual(cfg.eosTokenIds, [2, 7]);
  const legacy = JSON.parse(readFileSync(join(ROOT, 'llama-rope-llama3-legacy', 'config.json'), 'utf8'));
  const modern = JSON.parse(readFileSync(join(ROOT, 'llama-rope-llama3', 'config.json'), 'utf8'));
  assert.deepEqual(parseModelConfig(legacy, 'a').rope, parseModelConfig(modern, 'b').rope);
});

test('a checkpoint with only pytorch_model.bin gets a clear message', async () => {
  const { cpSync, rmSync, writeFileSync } = await import('node:fs');
  const dir = tempDir('ptbin-');
  cpSync(join(ROOT, 'llama', 'config.json'), join(dir, 'config.json'));
  writeFileSync(join(dir, 'pytorch_model.bin'), 'PK');
  await assert.rejects(
    Decoder.load(dir, await getBackend()),
    /only pytorch_model\.bin \(PyTorch pickle\) weights; gptq-ts reads safetensors/,
  );
  rmSync(join(dir, 'pytorch_model.bin'));
  await assert.rejects(Decoder.load(dir, await getBackend()), /no model\.safetensors or model\.safetensors\.index\.json/);
});
