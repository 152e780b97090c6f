import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from './helpers/temp.js';

const ROOT = join(import.meta.dirname, '..');

/** The README's library example, run as written (with 'gptq-ts' resolved to this checkout's source). */
test("the README's library example runs: quantize with partial options, load, evaluate, generate", () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const block = /## Library\n[\s\S]*?```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(block, 'README has a ts block under "## Library"');
  assert.match(block, /quantize\(dir, \{ bits: 4, groupSize: 128/);
  const cwd = tempDir('readme-');
  const file = join(cwd, 'example.mts');
  writeFileSync(file, block.replaceAll("from 'gptq-ts'", `from ${JSON.stringify(join(ROOT, 'src/index.ts'))}`));
  const run = () =>
    spawnSync(process.execPath, ['--import', import.meta.resolve('tsx'), file], { cwd, encoding: 'utf8', timeout: 300_000 });
  const r = run();
  assert.equal(r.status, 0, r.stderr);
  const [seconds, ppl, ...text] = r.stdout.trim().split('\n');
  assert.ok(Number(seconds) > 0, `quantize seconds ${seconds}`);
  assert.ok(Number(ppl) > 300 && Number(ppl) < 2000, `ppl ${ppl}`);
  // the continuation of "Once upon a time", its speed and why it stopped
  assert.match(text.join('\n'), /^[\s\S]{40,} [\d.]+ (eos|max-tokens|context)$/);
  const qc = JSON.parse(readFileSync(join(cwd, 'stories15m-w4', 'config.json'), 'utf8')).quantization_config;
  assert.deepEqual([qc.bits, qc.group_size, qc.sym, qc.checkpoint_format], [4, 128, true, 'gptq']);
  // run again: the output exists, so the library refuses before any work instead of replacing it
  const again = run();
  assert.notEqual(again.status, 0);
  assert.match(again.stderr, /stories15m-w4 already exists and is not empty/);
  assert.ok(existsSync(join(cwd, 'stories15m-w4', 'model.safetensors')));
});
