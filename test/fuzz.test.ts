import assert from 'node:assert/strict';
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import { evaluate } from '../src/eval/perplexity.js';
import { writeByteTokenizer } from './helpers/byte-tokenizer.js';
import { loadModel } from '../src/models/load.js';
import { writeGptqCheckpoint } from '../src/formats/gptq.js';
import { QUANTIZE_REFERENCE, quantizeModel } from '../src/quant/quantize-model.js';
import { getBackend } from '../src/tensor/index.js';
import { tempDir } from './helpers/temp.js';

/**
 * Seeded fuzzing of the files a model directory is read from (config.json values, the safetensors header and the
 * tokenizer.json of a real, tiny checkpoint): whatever the mutation, the load either fails with a UserError (one line, no JavaScript
 * internals) or succeeds with a model whose perplexity is a finite number.
 */
const FIXTURE = join(import.meta.dirname, 'fixtures/families/llama');
const INTERNAL = /Cannot read prop|is not a function|is not iterable|undefined|\[object Object\]|NaN|Maximum call stack/;

const VALUES: unknown[] = [null, true, false, 0, -1, 1.5, 1e309, '', 'x', [], [1], {}, { a: 1 }, 2 ** 53, -0, 3];

function mutateJson(value: unknown, rand: () => number): unknown {
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)]!;
  if (value && typeof value === 'object' && !Array.isArray(value) && rand() < 0.8) {
    const obj = { ...(value as Record<string, unknown>) };
    const key = pick(Object.keys(obj));
    if (rand() < 0.15) delete obj[key];
    else obj[key] = mutateJson(obj[key], rand);
    return obj;
  }
  return pick(VALUES);
}

async function fuzz(base: string, count: number, seed: number): Promise<{ refused: number; loaded: number }> {
  const config = JSON.parse(readFileSync(join(base, 'config.json'), 'utf8')) as Record<string, unknown>;
  const weights = readFileSync(join(base, 'model.safetensors'));
  const headerLen = Number(weights.readBigUInt64LE(0));
  const header = JSON.parse(weights.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, unknown>;
  const tokenizer = JSON.parse(readFileSync(join(base, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  const ids = Array.from({ length: 64 }, (_, i) => (i * 37) % 256);
  const rand = seededRandom(seed);
  const outcomes = { refused: 0, loaded: 0 };
  for (let i = 0; i < count; i++) {
    const dir = `${base}-${i}`;
    cpSync(base, dir, { recursive: true });
    if (i % 4 === 0) {
      // a GPTQ checkpoint's quantization_config gets half of the config mutations
      const qc = config['quantization_config'];
      const mutated = qc && rand() < 0.5 ? { ...config, quantization_config: mutateJson(qc, rand) } : mutateJson(config, rand);
      writeFileSync(join(dir, 'config.json'), JSON.stringify(mutated));
    } else if (i % 4 === 3) {
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(mutateJson(tokenizer, rand)));
    } else if (i % 4 === 1) {
      const json = Buffer.from(JSON.stringify(mutateJson(header, rand)));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      writeFileSync(join(dir, 'model.safetensors'), Buffer.concat([len, json, weights.subarray(8 + headerLen)]));
    } else {
      // raw byte flips in the header, its length field included
      const bytes = Buffer.from(weights);
      for (let k = 0; k < 3; k++) bytes[Math.floor(rand() * (8 + headerLen))] = Math.floor(rand() * 256);
      writeFileSync(join(dir, 'model.safetensors'), bytes);
    }
    try {
      const { model } = await loadModel(dir);
      // a legal but short context (max_position_embeddings) takes shorter windows
      const r = await evaluate(model, ids, { windows: 2, seqlen: Math.min(32, model.cfg.maxPositions) });
      assert.ok(Number.isFinite(r.ppl), `mutation ${i}: perplexity ${r.ppl}`);
      outcomes.loaded++;
    } catch (e) {
      const err = e as Error;
      assert.equal(err.name, 'UserError', `mutation ${i}: ${err.name}: ${err.message}`);
      assert.equal(err.message.includes('\n'), false, `mutation ${i}: ${err.message}`);
      assert.doesNotMatch(err.message.replace(/JSON\.stringify|"undefined"/g, ''), INTERNAL, `mutation ${i}: ${err.message}`);
      outcomes.refused++;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return outcomes;
}

test('fuzzed config.json, safetensors headers and tokenizer.json of a float and a GPTQ checkpoint: a one-line UserError or a finite perplexity, never a crash', async () => {
  const root = tempDir('fuzz-');
  const float = join(root, 'float');
  cpSync(FIXTURE, float, { recursive: true });
  writeByteTokenizer(float);
  const gptqDir = join(root, 'gptq');
  const opts = { ...QUANTIZE_REFERENCE, method: 'rtn' as const, bits: 4, groupSize: 32, sym: true };
  const { layers } = await quantizeModel(FIXTURE, await getBackend(), opts, undefined);
  await writeGptqCheckpoint(FIXTURE, gptqDir, layers, { format: 'gptq', floatDtype: 'F32', maxShardBytes: 2 ** 40, quant: opts });
  // config.json's quantization_config is the one read: no second copy to mask its mutations
  rmSync(join(gptqDir, 'quantize_config.json'));
  writeByteTokenizer(gptqDir);
  const a = await fuzz(float, 200, 2026);
  const b = await fuzz(gptqDir, 120, 7);
  assert.ok(a.refused > 120 && b.refused > 70, JSON.stringify({ float: a, gptq: b }));
  assert.ok(a.loaded > 0 && b.loaded > 0, 'some mutations are harmless and load');
});
