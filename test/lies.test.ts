import assert from 'node:assert/strict';
import { cpSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { writeGptqCheckpoint } from '../src/formats/gptq.js';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../src/io/safetensors.js';
import { writeByteTokenizer } from './helpers/byte-tokenizer.js';
import { loadModel } from '../src/models/load.js';
import { Decoder } from '../src/models/index.js';
import { QUANTIZE_REFERENCE, quantizeModel } from '../src/quant/quantize-model.js';
import { getBackend } from '../src/tensor/index.js';
import { tempDir } from './helpers/temp.js';

/**
 * Files that contradict themselves or the format are refused with one message naming the file and what is wrong,
 * never read as if nothing were wrong. Each row: a lie told by a copy of a real checkpoint, and the refusal.
 */
const FIXTURE = join(import.meta.dirname, 'fixtures/families/llama');

let gptqDir: string;
before(async () => {
  const opts = { ...QUANTIZE_REFERENCE, bits: 4, groupSize: 32, sym: true, actOrder: true, method: 'rtn' as const };
  // RTN has no column order: act-order is only in what the config claims below
  const { layers } = await quantizeModel(FIXTURE, await getBackend(), { ...opts, actOrder: false }, undefined);
  gptqDir = join(tempDir('lies-'), 'gptq');
  await writeGptqCheckpoint(FIXTURE, gptqDir, layers, { format: 'gptq', floatDtype: 'F32', maxShardBytes: 2 ** 40, quant: opts });
});

/** A copy of `src` with a tokenizer (loadModel loads one) and `edit` applied to it. */
async function variant(src: string, edit: (dir: string) => void | Promise<void>): Promise<string> {
  const dir = join(tempDir('lie-'), 'm');
  cpSync(src, dir, { recursive: true });
  writeByteTokenizer(dir);
  await edit(dir);
  return dir;
}

/** Rewrite a safetensors file's header (and optionally its bytes after the header). */
function editSafetensors(file: string, edit: (h: Record<string, unknown>) => void, o: { lengthDelta?: number; tail?: Buffer } = {}): void {
  const bytes = readFileSync(file);
  const len = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + len).toString('utf8')) as Record<string, unknown>;
  edit(header);
  const json = Buffer.from(JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length + (o.lengthDelta ?? 0)));
  writeFileSync(file, Buffer.concat([prefix, json, bytes.subarray(8 + len), o.tail ?? Buffer.alloc(0)]));
}

/** Rewrite a safetensors file, well-formed, with its tensors changed by `edit`. */
async function rewriteTensors(file: string, edit: (all: Map<string, TensorToWrite>) => void): Promise<void> {
  const f = new SafetensorsFile(file);
  const all = new Map<string, TensorToWrite>([...f.tensors.keys()].map((n) => [n, f.read(n) as TensorToWrite]));
  f.close();
  edit(all);
  rmSync(file);
  await writeSafetensors(file, all);
}
const dropTensors = (file: string, drop: (name: string) => boolean): Promise<void> =>
  rewriteTensors(file, (all) => [...all.keys()].filter(drop).forEach((n) => all.delete(n)));

type Entry = { dtype: string; shape: number[]; data_offsets: [number, number] };
const entry = (h: Record<string, unknown>, name: string): Entry => h[name] as Entry;
const editConfig = (dir: string, f: (c: Record<string, unknown>) => void): void => {
  const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  f(c);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(c));
};
const st = (dir: string): string => join(dir, 'model.safetensors');

type Lie = [what: string, edit: (dir: string) => void | Promise<void>, refusal: RegExp];

const FLOAT_LIES: Lie[] = [
  [
    'overlapping data_offsets (one tensor reading another bytes)',
    (d) =>
      editSafetensors(st(d), (h) => {
        const e = entry(h, 'model.norm.weight');
        e.data_offsets = [e.data_offsets[0] - 4, e.data_offsets[1] - 4];
      }),
    /model\.safetensors: tensor .* (overlap the previous tensor's bytes|starts at byte \d+ but the previous tensor ends)/,
  ],
  [
    'a header length one byte short',
    (d) => editSafetensors(st(d), () => {}, { lengthDelta: -1 }),
    /model\.safetensors: safetensors header is not valid JSON/,
  ],
  [
    'extra bytes after the data',
    (d) => editSafetensors(st(d), () => {}, { tail: Buffer.alloc(4) }),
    /the tensors cover \d+ bytes of data but the file holds \d+/,
  ],
  [
    'a dtype named like an Object property',
    (d) => editSafetensors(st(d), (h) => (entry(h, 'model.norm.weight').dtype = 'toString')),
    /tensor model\.norm\.weight has unsupported dtype "toString"/,
  ],
  [
    'a null header entry',
    (d) => editSafetensors(st(d), (h) => (h['model.norm.weight'] = null)),
    /tensor model\.norm\.weight has no dtype\/shape\/data_offsets entry/,
  ],
  [
    'non-string metadata',
    (d) => editSafetensors(st(d), (h) => (h['__metadata__'] = { format: 1 })),
    /__metadata__ must map strings to strings/,
  ],
  ['config.json is null', (d) => writeFileSync(join(d, 'config.json'), 'null'), /config\.json: not a JSON object/],
  [
    'generation_config.json is null',
    (d) => writeFileSync(join(d, 'generation_config.json'), 'null'),
    /generation_config\.json: not a JSON object/,
  ],
  [
    'generation_config.json with a non-id eos_token_id',
    (d) => writeFileSync(join(d, 'generation_config.json'), JSON.stringify({ eos_token_id: ['2'] })),
    /generation_config\.json: eos_token_id must be a token id or a list of them/,
  ],
  [
    'num_hidden_layers smaller than the layers present',
    (d) => editConfig(d, (c) => (c['num_hidden_layers'] = 1)),
    /tensor model\.layers\.1\..* is not part of a 1-layer llama model as config\.json describes it/,
  ],
  [
    'num_hidden_layers larger than the layers present',
    (d) => editConfig(d, (c) => (c['num_hidden_layers'] = 3)),
    /missing tensors model\.layers\.2\.\* \(config\.json says 3 layers; the checkpoint holds 2\)/,
  ],
  [
    'a header entry removed but its bytes left',
    (d) => editSafetensors(st(d), (h) => delete h['lm_head.weight']),
    /tensor model\.embed_tokens\.weight starts at byte \d+ but the previous tensor ends at 0: a gap in the data region/,
  ],
  ['untied embeddings with no lm_head', (d) => dropTensors(st(d), (n) => n === 'lm_head.weight'), /missing tensor lm_head\.weight/],
  [
    'a weight and a bias the config does not have',
    (d) =>
      rewriteTensors(st(d), (all) =>
        all.set('model.layers.0.mlp.gate_proj.bias', { dtype: 'F32', shape: [128], data: new Float32Array(128) }),
      ),
    /tensor model\.layers\.0\.mlp\.gate_proj\.bias is not part of a 2-layer llama model/,
  ],
  [
    'tied embeddings but a different lm_head',
    (d) => editConfig(d, (c) => (c['tie_word_embeddings'] = true)),
    /tie_word_embeddings is true but lm_head\.weight differs from model\.embed_tokens\.weight/,
  ],
  [
    'a field that changes the arithmetic',
    (d) => editConfig(d, (c) => (c['attn_logit_softcapping'] = 30)),
    /attn_logit_softcapping=30: not implemented for model_type "llama"/,
  ],
];

const GPTQ_LIES: Lie[] = [
  [
    'NaN in the scales',
    (d) => {
      const bytes = readFileSync(st(d));
      const len = Number(bytes.readBigUInt64LE(0));
      const e = entry(JSON.parse(bytes.subarray(8, 8 + len).toString('utf8')), 'model.layers.0.mlp.up_proj.scales');
      bytes.writeUInt16LE(0x7e00, 8 + len + e.data_offsets[0] + 6);
      writeFileSync(st(d), bytes);
    },
    /model\.layers\.0\.mlp\.up_proj\.scales has NaN\/Inf at element 3/,
  ],
  [
    'desc_act true but no g_idx',
    (d) => {
      editConfig(d, (c) => ((c['quantization_config'] as Record<string, unknown>)['desc_act'] = true));
      rmSync(join(d, 'quantize_config.json'));
      return dropTensors(st(d), (n) => n.endsWith('.g_idx'));
    },
    /model\.layers\.0\.self_attn\.q_proj\.g_idx is missing but desc_act is true/,
  ],
  [
    'group_size that disagrees with the tensors',
    (d) => editConfig(d, (c) => ((c['quantization_config'] as Record<string, unknown>)['group_size'] = 16)),
    /qzeros has shape \[\d+,\d+\] but the config \(bits 4, group_size 16\) implies/,
  ],
  [
    'sym true on a file whose zero points are not symmetric',
    (d) =>
      rewriteTensors(st(d), (all) => {
        const z = all.get('model.layers.1.mlp.down_proj.qzeros')!;
        (z.data as Int32Array)[0] = 0x77777776;
      }),
    /model\.layers\.1\.mlp\.down_proj\.qzeros group 0 row 0 has zero point 7, but quantization_config says sym \(zero 8\)/,
  ],
  [
    'no quantization_config for a GPTQ checkpoint',
    (d) => {
      editConfig(d, (c) => delete c['quantization_config']);
      rmSync(join(d, 'quantize_config.json'));
    },
    /holds GPTQ tensors \(model\.layers\.0\.self_attn\.q_proj\.qweight\) but no quantization_config says how to read them/,
  ],
];

interface TokenizerJson {
  model: { vocab: unknown; merges: unknown; unk_token?: unknown };
  added_tokens: object[];
}
const editTokenizer = (dir: string, f: (t: TokenizerJson) => unknown): void => {
  const t = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as TokenizerJson;
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(f(t) ?? t));
};
const vocabOf = (t: TokenizerJson): Record<string, unknown> => t.model.vocab as Record<string, unknown>;
const firstToken = (t: TokenizerJson): string => Object.keys(vocabOf(t))[0]!;

const TOKENIZER_LIES: Lie[] = [
  ['tokenizer.json is null', (d) => writeFileSync(join(d, 'tokenizer.json'), 'null'), /tokenizer\.json: not a JSON object/],
  ['an empty vocab', (d) => editTokenizer(d, (t) => void (t.model.vocab = {})), /model BPE has an empty vocab/],
  [
    'a vocab given as a list',
    (d) => editTokenizer(d, (t) => void (t.model.vocab = Object.keys(vocabOf(t)))),
    /model BPE has no vocab object/,
  ],
  [
    'a string id',
    (d) => editTokenizer(d, (t) => void (vocabOf(t)[firstToken(t)] = 'x')),
    /vocab token ".+" has id "x", not a non-negative integer/,
  ],
  ['a negative id', (d) => editTokenizer(d, (t) => void (vocabOf(t)[firstToken(t)] = -5)), /has id -5, not a non-negative integer/],
  ['two tokens sharing an id', (d) => editTokenizer(d, (t) => void (vocabOf(t)[firstToken(t)] = 7)), /vocab tokens .+ share id 7/],
  [
    'a merge naming unknown tokens',
    (d) => editTokenizer(d, (t) => void (t.model.merges = ['zz qq'])),
    /merge "zz qq" names "zz", which is not in the vocab/,
  ],
  [
    'an added token whose id disagrees with the vocab',
    (d) => editTokenizer(d, (t) => void t.added_tokens.push({ id: 7, content: firstToken(t), special: true })),
    /added token ".+" has id 7 but the vocab gives it \d+/,
  ],
  [
    'an unk_token not in the vocab',
    (d) => editTokenizer(d, (t) => void (t.model.unk_token = '<nope>')),
    /unk_token "<nope>" is not in the vocabulary/,
  ],
  [
    'more token ids than the model has embeddings',
    (d) => editTokenizer(d, (t) => void t.added_tokens.push({ id: 300, content: '<extra>', special: true })),
    /the tokenizer has 301 ids but config\.json's vocab_size is 256/,
  ],
];

for (const [kind, lies] of [
  ['float', FLOAT_LIES],
  ['GPTQ', GPTQ_LIES],
  ['tokenizer of a', TOKENIZER_LIES],
] as const) {
  for (const [what, lie, refusal] of lies) {
    test(`${kind} checkpoint refused: ${what}`, async () => {
      const dir = await variant(kind === 'GPTQ' ? gptqDir : FIXTURE, lie);
      await assert.rejects(loadModel(dir), (e: Error) => {
        assert.equal(e.name, 'UserError', `${e.name}: ${e.message}`);
        assert.match(e.message, refusal);
        assert.equal(e.message.includes('\n'), false);
        return true;
      });
    });
  }
}

test('the unedited copies load: the lies above are what is refused', async () => {
  for (const src of [FIXTURE, gptqDir]) await loadModel(await variant(src, () => {}));
  await Decoder.load(FIXTURE, await getBackend());
});

test('a float model whose layers would exceed the memory limit as float32 is refused up front, with the figure', async () => {
  // the fixture's 2 blocks: 36864 weights each, 294912 bytes as float32
  process.env['GPTQ_TS_MAX_LOADED_GB'] = '0.0002';
  try {
    await assert.rejects(
      loadModel(await variant(FIXTURE, () => {})),
      /: gptq-ts would hold 0\.000295 GB of its weights \(its linear layers as float32; a quantized checkpoint of it loads packed\), more than the limit of 0\.0002 GB \(GPTQ_TS_MAX_LOADED_GB raises it\)$/,
    );
    // its quantized checkpoint loads packed, under the same limit
    await loadModel(await variant(gptqDir, () => {}));
    process.env['GPTQ_TS_MAX_LOADED_GB'] = '0.0003';
    await loadModel(await variant(FIXTURE, () => {}));
  } finally {
    delete process.env['GPTQ_TS_MAX_LOADED_GB'];
  }
});

test('llama2.c checkpoints that contradict their header are refused by convert, one line each', async () => {
  const { stories15mLlama2cFiles } = await import('../src/io/stories.js');
  const { convertLlama2c } = await import('../src/io/llama2c.js');
  const { checkpoint } = await stories15mLlama2cFiles();
  const dir = tempDir('l2c-');
  const withHeader = (i: number, v: number): Buffer => {
    const b = Buffer.from(checkpoint);
    b.writeInt32LE(v, 4 * i);
    return b;
  };
  const nan = Buffer.from(checkpoint);
  nan.writeFloatLE(NaN, 28 + 4 * 1000);
  const cases: [string, Buffer, RegExp][] = [
    ['a zero dimension', withHeader(0, 0), /not a llama2\.c checkpoint \(header 0, /],
    ['heads not dividing dim', withHeader(3, 7), /not a llama2\.c checkpoint/],
    ['kv heads not dividing heads', withHeader(4, 4), /not a llama2\.c checkpoint/],
    [
      'truncated',
      checkpoint.subarray(0, checkpoint.length - 4),
      /truncated llama2\.c checkpoint \(60816024 bytes, header implies 60816028\)/,
    ],
    ['the shared-classifier sign flipped (an unshared header on a shared file)', withHeader(5, -32000), /truncated llama2\.c checkpoint/],
    [
      'extra bytes after the weights',
      Buffer.concat([checkpoint, Buffer.alloc(8)]),
      /60816036 bytes but the header \(288, 768, 6, 6, 6, 32000, 256\) implies 60816028/,
    ],
    ['NaN in a weight', nan, /NaN\/Inf at float 1000 of the weights/],
  ];
  for (const [what, bytes, refusal] of cases) {
    const bin = join(dir, `${cases.findIndex((c) => c[0] === what)}.bin`);
    writeFileSync(bin, bytes);
    await assert.rejects(convertLlama2c(bin, undefined, join(dir, 'out')), (e: Error) => {
      assert.equal(e.name, 'UserError', `${what}: ${e.message}`);
      assert.match(e.message, refusal, what);
      return true;
    });
  }
  assert.deepEqual(
    readdirSync(dir).filter((n) => !n.endsWith('.bin')),
    [],
  );
});
