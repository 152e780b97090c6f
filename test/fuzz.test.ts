import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { seededRandom } from '../src/calib/windows.js';
import { evaluate } from '../src/eval/perplexity.js';
import { writeByteTokenizer } from './helpers/byte-tokenizer.js';
import { loadModel } from '../src/models/load.js';

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

test('fuzzed config.json, safetensors headers and tokenizer.json: a one-line UserError or a finite perplexity, never a crash', async () => {
  const base = join(mkdtempSync(join(tmpdir(), 'fuzz-')), 'm');
  cpSync(FIXTURE, base, { recursive: true });
  writeByteTokenizer(base);
  const config = JSON.parse(readFileSync(join(base, 'config.json'), 'utf8')) as Record<string, unknown>;
  const weights = readFileSync(join(base, 'model.safetensors'));
  const headerLen = Number(weights.readBigUInt64LE(0));
  const header = JSON.parse(weights.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, unknown>;
  const tokenizer = JSON.parse(readFileSync(join(base, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  const ids = Array.from({ length: 64 }, (_, i) => (i * 37) % 256);
  const rand = seededRandom(2026);
  const outcomes = { refused: 0, loaded: 0 };
  for (let i = 0; i < 200; i++) {
    const dir = `${base}-${i}`;
    cpSync(base, dir, { recursive: true });
    if (i % 4 === 0) {
      writeFileSync(join(dir, 'config.json'), JSON.stringify(mutateJson(config, rand)));
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
  assert.ok(outcomes.refused > 120, JSON.stringify(outcomes));
});
