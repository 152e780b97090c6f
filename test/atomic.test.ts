import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeAtomically } from '../src/io/atomic.js';
import { pullStories15m } from '../src/io/stories.js';

test('a failing build leaves neither the target nor a temporary behind', async () => {
  const parent = mkdtempSync(join(tmpdir(), 'atomic-'));
  const target = join(parent, 'out');
  await assert.rejects(
    writeAtomically(target, (tmp) => {
      writeFileSync(tmp, 'half');
      throw new Error('crash mid-write');
    }),
    /crash mid-write/,
  );
  assert.deepEqual(readdirSync(parent), []);
});

test('Ctrl-C during quantize leaves no output directory', async () => {
  const model = await pullStories15m();
  const parent = mkdtempSync(join(tmpdir(), 'sigint-'));
  const out = join(parent, 'q');
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'quantize', model, '--nsamples', '32', '--out', out], {
    stdio: 'pipe',
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  // interrupt once the work is under way (the calibration text has been read)
  await new Promise<void>((resolve) => {
    const poll = setInterval(() => {
      if (/tokenizing/.test(stderr)) {
        clearInterval(poll);
        setTimeout(resolve, 1500);
      }
    }, 50);
  });
  child.kill('SIGINT');
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  assert.equal(code, 130);
  assert.equal(existsSync(out), false);
  assert.deepEqual(readdirSync(parent), []);
});
