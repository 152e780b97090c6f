/**
 * The reference for test/gguf-mix.test.ts: which type llama-quantize itself gives every tensor, for each of its mix
 * names, on small random models whose shapes exercise the mixes' rules (rows that are and are not whole super-blocks
 * of 256, 8–12 layers for the layer-dependent rules, n_gqa 1, 4 and 8 for attn_v, tied and untied heads, llama,
 * qwen2 and falcon, whose rules differ). Writes test/fixtures/gguf-mix.json; `npm test` only reads that file.
 *
 * Usage: node --import tsx scripts/gguf/make_mix_fixtures.ts LLAMA_TOOLS_DIR
 * (LLAMA_TOOLS_DIR from scripts/gguf/build-llama-tools.sh: llama-quantize of the release node-llama-cpp ships)
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readGgufFileInfo } from 'node-llama-cpp';
import { writeGguf } from '../../src/formats/gguf.js';
import { GGML_TYPES } from '../../src/formats/ggml-blocks.js';
import { GGUF_MIXES } from '../../src/formats/gguf-mix.js';
import { writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.js';
import { layerPrefix, linearGroups, linearShape, normShapes, readModelConfig } from '../../src/models/index.js';
import { loadTokenizer } from '../../src/models/load.js';
import { writeByteTokenizer } from '../../test/helpers/byte-tokenizer.js';

const tools = process.argv[2];
if (!tools) throw new Error('usage: make_mix_fixtures.ts LLAMA_TOOLS_DIR');
const ROOT = join(import.meta.dirname, '../../test/fixtures');

/** family fixture → config.json edits */
const CASES: Record<string, { fixture: string; edit: Record<string, unknown> }> = {
  // n_gqa 4, rows of 256 (attention) and of 320 (ffn_down: not whole super-blocks), 12 layers, untied head
  'llama-gqa4': {
    fixture: 'llama',
    edit: { num_hidden_layers: 12, hidden_size: 256, num_attention_heads: 8, num_key_value_heads: 2, head_dim: 32, intermediate_size: 320 },
  },
  // multi-head attention (n_gqa 1), tied head, 8 layers, every row 256 or 512
  'llama-mha-tied': {
    fixture: 'llama-tied',
    edit: { num_hidden_layers: 8, hidden_size: 256, num_attention_heads: 4, num_key_value_heads: 4, head_dim: 64, intermediate_size: 512 },
  },
  // stories15M's widths: no row is a whole super-block but ffn_down's (768), 10 layers
  'llama-288': {
    fixture: 'llama',
    edit: { num_hidden_layers: 10, hidden_size: 288, num_attention_heads: 6, num_key_value_heads: 6, head_dim: 48, intermediate_size: 768 },
  },
  // n_gqa 8, 9 layers
  'qwen2-gqa8': {
    fixture: 'qwen2',
    edit: {
      num_hidden_layers: 9,
      hidden_size: 256,
      num_attention_heads: 8,
      num_key_value_heads: 1,
      intermediate_size: 512,
      layer_types: Array(9).fill('full_attention'),
    },
  },
  // falcon's own rules (head Q8_0, ffn_down and attn_output differ), fused qkv, tied, 16 layers (n/16 = 1)
  falcon: {
    fixture: 'falcon',
    edit: {
      num_hidden_layers: 16,
      hidden_size: 256,
      num_attention_heads: 8,
      num_kv_heads: 2,
      ffn_hidden_size: 1024,
      activation: 'gelu_new',
    },
  },
};

/** llama-quantize runs beside the plain mixes: its flags that change the choice */
const VARIANTS: { mix: string; flags: string[] }[] = [
  { mix: 'Q4_K', flags: [] },
  { mix: 'Q4_K_M', flags: ['--pure'] },
  { mix: 'Q3_K_M', flags: ['--token-embedding-type', 'q8_0', '--output-tensor-type', 'q5_k'] },
  { mix: 'Q5_K_M', flags: ['--output-tensor-type', 'f32'] },
  { mix: 'Q6_K', flags: ['--pure', '--token-embedding-type', 'f32', '--output-tensor-type', 'f32'] },
];

const TYPE_NAMES = new Map<number, string>([
  [0, 'F32'],
  [1, 'F16'],
  ...Object.entries(GGML_TYPES).map(([k, v]) => [v, k] as [number, string]),
]);

/** Deterministic small weights: the types chosen depend on shapes only, but llama-quantize must read real floats. */
function random(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 0.1;
  }
  return out;
}

/** A random checkpoint of exactly the tensors config.json describes (the loader's own lists of them). */
async function writeRandomModel(dir: string): Promise<void> {
  const cfg = readModelConfig(dir);
  const T = cfg.tensors;
  const D = cfg.hiddenSize;
  const tensors = new Map<string, TensorToWrite>();
  let seed = 1;
  const add = (name: string, shape: number[]): void => {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.set(name, { dtype: 'F32', shape, data: random(n, seed++) });
  };
  const normWithBias = (weight: string, n: number): void => {
    add(weight, [n]);
    if (cfg.normKind === 'layer') add(weight.replace(/weight$/, 'bias'), [n]);
  };
  add(T.embed, [cfg.vocabSize, D]);
  if (!cfg.tieWordEmbeddings) add(T.head, [cfg.vocabSize, D]);
  if (T.finalNorm) normWithBias(T.finalNorm, D);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = layerPrefix(cfg, l);
    for (const [name, n] of normShapes(cfg)) normWithBias(`${p}${name}.weight`, n);
    for (const name of linearGroups(cfg).flat()) {
      const [rows, cols] = linearShape(cfg, name);
      add(`${p}${name}.weight`, cfg.transposedLinears ? [cols, rows] : [rows, cols]);
      if (cfg.biases.has(name)) add(`${p}${name}.bias`, [rows]);
    }
  }
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
}

const out: Record<
  string,
  { config: Record<string, unknown>; runs: Record<string, Record<string, string>>; fileTypes: Record<string, number> }
> = {};
for (const [name, c] of Object.entries(CASES)) {
  const parent = mkdtempSync(join(tmpdir(), `mixfx-${name}-`));
  const dir = join(parent, 'model');
  cpSync(join(ROOT, 'families', c.fixture), dir, { recursive: true });
  rmSync(join(dir, 'model.safetensors'));
  rmSync(join(dir, 'logits.f32'));
  const config = { ...(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>), ...c.edit };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  writeByteTokenizer(dir);
  await writeRandomModel(dir);
  const cfg = readModelConfig(dir);
  const f32 = join(parent, 'f32.gguf');
  await writeGguf(dir, cfg, loadTokenizer(dir), new Map(), f32, { floatLinears: true });
  const runs: Record<string, Record<string, string>> = {};
  const fileTypes: Record<string, number> = {};
  for (const v of [...GGUF_MIXES.map((mix) => ({ mix, flags: [] as string[] })), ...VARIANTS]) {
    const key = [v.mix, ...v.flags].join(' ');
    const q = join(parent, 'q.gguf');
    const r = spawnSync(join(tools, 'llama-quantize'), [...v.flags, f32, q, v.mix], { encoding: 'utf8' });
    if (r.status !== 0) {
      // an explicit type whose blocks do not fit the rows: llama-quantize applies no fallback to it and fails
      if (!/quantized data validation failed/.test(r.stderr)) throw new Error(`llama-quantize ${key} on ${name}: ${r.stderr.slice(-2000)}`);
      runs[key] = { error: 'llama-quantize: quantized data validation failed' };
      continue;
    }
    const info = await readGgufFileInfo(q);
    fileTypes[key] = Number(info.metadata.general.file_type);
    runs[key] = Object.fromEntries(info.fullTensorInfo!.map((t) => [t.name, TYPE_NAMES.get(t.ggmlType) ?? `type ${t.ggmlType}`]));
    rmSync(q);
    process.stderr.write(`${name} ${key}\n`);
  }
  out[name] = { config, runs, fileTypes };
  rmSync(parent, { recursive: true, force: true });
}
writeFileSync(join(ROOT, 'gguf-mix.json'), `${JSON.stringify(out)}\n`);
process.stderr.write(`wrote ${join(ROOT, 'gguf-mix.json')}\n`);
