import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { FTYPE_IDS, ggufMixOf, planGgufTypes, tensorTypeOf, type GgufMixOptions } from '../src/formats/gguf-mix.js';
import { readModelConfig } from '../src/models/index.js';
import { tempDir } from './helpers/temp.js';

/*
 * Our choice of type for every tensor, per llama-quantize name and flag, against what llama-quantize itself chose
 * on the same models (test/fixtures/gguf-mix.json, written by scripts/gguf/make_mix_fixtures.ts from llama.cpp's
 * own tool): every quantized tensor the same type, and every tensor we do not plan left float by it too.
 */
const FIXTURE = JSON.parse(readFileSync(join(import.meta.dirname, 'fixtures', 'gguf-mix.json'), 'utf8')) as Record<
  string,
  { config: Record<string, unknown>; runs: Record<string, Record<string, string>>; fileTypes: Record<string, number> }
>;

/** llama-quantize's command line as our options */
function optionsOf(key: string): GgufMixOptions {
  const [mix, ...flags] = key.split(' ');
  const o: GgufMixOptions = { mix: ggufMixOf(mix!) };
  for (let i = 0; i < flags.length; i++) {
    if (flags[i] === '--pure') o.pure = true;
    else if (flags[i] === '--output-tensor-type') o.outputType = tensorTypeOf(flags[++i]!, flags[i - 1]!);
    else if (flags[i] === '--token-embedding-type') o.embeddingType = tensorTypeOf(flags[++i]!, flags[i - 1]!);
    else throw new Error(`unknown flag ${flags[i]}`);
  }
  return o;
}

for (const [name, { config, runs, fileTypes }] of Object.entries(FIXTURE)) {
  test(`${name}: every tensor's type is llama-quantize's, for each of ${Object.keys(runs).length} names and flags`, () => {
    const dir = tempDir('mix-');
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    const cfg = readModelConfig(dir);
    for (const [key, want] of Object.entries(runs)) {
      if (want['error']) {
        assert.throws(() => planGgufTypes(cfg, optionsOf(key)), /needs rows that are whole blocks/, key);
        continue;
      }
      // general.file_type: llama-quantize writes the ftype of the name, whatever the flags
      assert.equal(FTYPE_IDS[optionsOf(key).mix], fileTypes[key], `${name} ${key}: general.file_type`);
      const plan = planGgufTypes(cfg, optionsOf(key));
      const got = Object.fromEntries(plan.map((t) => [t.name, t.type]));
      for (const [t, type] of Object.entries(want)) assert.equal(got[t] ?? 'F32', type, `${name} ${key}: ${t}`);
      for (const t of plan) assert.ok(t.name in want, `${name} ${key}: ${t.name} is not in llama-quantize's file`);
    }
  });
}

test('the mixes differ where llama.cpp says they do (the fixture is not one type everywhere)', () => {
  const runs = FIXTURE['llama-gqa4']!.runs;
  assert.equal(runs['Q4_K_M']!['blk.0.attn_v.weight'], 'Q6_K');
  assert.equal(runs['Q4_K_M']!['blk.1.attn_v.weight'], 'Q4_K');
  assert.equal(runs['Q4_K_M --pure']!['blk.0.attn_v.weight'], 'Q4_K');
  assert.deepEqual(runs['Q4_K'], runs['Q4_K_M']);
});

test('llama-quantize names without a grid here are refused by name', () => {
  assert.throws(() => ggufMixOf('IQ2_XXS'), /IQ2_XXS needs types \(or an importance matrix\) that gptq-ts has no grid for/);
  assert.throws(() => ggufMixOf('Q2_K_S'), /Q2_K_S needs types/);
  assert.throws(() => ggufMixOf('Q7_K'), /"Q7_K" is not one of Q4_0/);
  assert.equal(ggufMixOf('q4_k'), 'Q4_K_M');
});
