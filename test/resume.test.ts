import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { checkOutputPath } from '../src/io/atomic.js';
import { UserError } from '../src/io/errors.js';
import { pullStories15m } from '../src/io/stories.js';
import { quantize, type PipelineOptions } from '../src/pipeline.js';
import type { StageSeconds } from '../src/quant/quantize-model.js';
import { RowFile } from '../src/quant/run-state.js';
import { tempDir } from './helpers/temp.js';

/**
 * A resumable run stopped after a block continues from its state and writes exactly the bytes an uninterrupted
 * run writes; the state survives other runs' tidying, and a different setting does not resume it.
 */
let model: string;
let parent: string;
const settings: Partial<PipelineOptions> = { nsamples: 8, bits: 4, groupSize: 64 };

before(async () => {
  model = await pullStories15m();
  parent = tempDir('resume-');
});
after(() => rmSync(parent, { recursive: true, force: true }));

/** The output's files; the summary without the times, which differ between any two runs. */
function contents(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const f of readdirSync(dir).sort()) {
    let text = readFileSync(join(dir, f)).toString('base64');
    if (f === 'quantize_summary.json') {
      const s = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { timings: unknown; layers: { seconds?: number }[]; out: string };
      text = JSON.stringify({ ...s, timings: undefined, out: undefined, layers: s.layers.map((l) => ({ ...l, seconds: undefined })) });
    }
    out.set(f, text);
  }
  return out;
}

class Stop extends Error {}

const ENTRY = join(import.meta.dirname, '../src/cli/entry.ts');
const TSX = import.meta.resolve('tsx');
const CLI_SETTINGS = ['--nsamples', '8', '--bits', '4', '--group-size', '64'];

/** `gptq quantize ... --resume` run to its end (or killed once `until` holds); resolves with its exit code. */
function cliRun(out: string, until?: () => boolean): Promise<number | null> {
  const child = spawn(process.execPath, ['--import', TSX, ENTRY, 'quantize', model, '--out', out, '--resume', ...CLI_SETTINGS], {
    stdio: 'ignore',
  });
  const poll = until && setInterval(() => until() && child.kill('SIGKILL'), 20);
  return new Promise((resolve) =>
    child.on('exit', (code) => {
      clearInterval(poll);
      resolve(code);
    }),
  );
}

test('a run stopped after block 2 resumes to the same bytes as an uninterrupted run', async () => {
  const whole = join(parent, 'whole');
  await quantize(model, settings, whole);

  const resumed = join(parent, 'resumed');
  const partial = join(parent, '.resumed.partial');
  const stopAfter2 = (l: number): void => {
    if (l === 2) throw new Stop();
  };
  await assert.rejects(quantize(model, settings, resumed, { resume: true, onBlock: stopAfter2 }), Stop);
  assert.ok(!existsSync(resumed), 'no output appears before the run is complete');
  const progress = JSON.parse(readFileSync(join(partial, 'progress.json'), 'utf8')) as { seconds: StageSeconds }[];
  assert.equal(progress.length, 3);
  // disk holds block 3's input and one spare file for the next output (block 2's input, to be overwritten), not
  // every block's hidden states
  assert.deepEqual(
    readdirSync(partial)
      .filter((f) => f.startsWith('hidden-'))
      .sort(),
    ['hidden-0-3.f32', 'hidden-0-spare.f32'],
  );

  // a later run's tidying of stale temporaries keeps the state; a different setting is refused, not resumed
  checkOutputPath(resumed);
  assert.ok(existsSync(partial));
  await assert.rejects(quantize(model, { ...settings, bits: 3 }, resumed, { resume: true }), /had options .*"bits":4/);

  const blocks: number[] = [];
  const { summary } = await quantize(model, settings, resumed, { resume: true, onBlock: (l) => blocks.push(l) });
  assert.deepEqual(blocks, [3, 4, 5], 'only the unfinished blocks run again');
  // every block's seconds, the adopted ones as the stopped run recorded them; the stages' totals are their sums
  const { timings } = summary;
  assert.equal(timings.blocks.length, 6);
  assert.deepEqual(
    timings.blocks.slice(0, 3),
    progress.map((b) => b.seconds),
  );
  for (const k of ['forward', 'hessian', 'sweep'] as const) {
    const sum = timings.blocks.reduce((a, b) => a + b[k], 0);
    assert.ok(
      timings.blocks.every((b) => b[k] > 0) && Math.abs(sum - timings[k]) < 1e-9 * timings[k],
      `${k}: ${sum} against ${timings[k]}`,
    );
  }
  assert.ok(!existsSync(partial), 'the state goes once the output is written');
  assert.deepEqual(contents(resumed), contents(whole));
});

test('gptq quantize --resume killed with SIGKILL after block 1 continues to the same bytes', async () => {
  const whole = join(parent, 'whole');
  if (!existsSync(whole)) await quantize(model, settings, whole);
  const out = join(parent, 'killed');
  const progress = join(parent, '.killed.partial', 'progress.json');
  const finished = (): number => (existsSync(progress) ? (JSON.parse(readFileSync(progress, 'utf8')) as unknown[]).length : 0);
  assert.equal(await cliRun(out, () => finished() >= 2), null, 'killed before it finished');
  assert.ok(!existsSync(out));
  const done = finished();
  assert.ok(done >= 2 && done < 6, `${done} blocks finished before the kill`);
  assert.equal(await cliRun(out), 0);
  assert.deepEqual(contents(out), contents(whole));
});

test('a run without --resume leaves no state behind, and warns about an interrupted one it keeps', async () => {
  const out = join(parent, 'plain');
  const stopAt0 = (): void => {
    throw new Stop();
  };
  await assert.rejects(quantize(model, settings, out, { resume: true, onBlock: stopAt0 }), Stop);
  const warnings: string[] = [];
  await assert.rejects(quantize(model, settings, out, { onBlock: stopAt0, warn: (m) => warnings.push(m) }), Stop);
  assert.match(warnings.join('\n'), /\.plain\.partial holds an interrupted run's finished blocks: kept/);
  assert.deepEqual(
    readdirSync(parent).filter((f) => f.startsWith('.plain')),
    ['.plain.partial'],
  );
  await assert.rejects(quantize(model, settings, undefined, { resume: true }), /--resume needs --out/);
});

test('calibration rows written behind read back as written, and a failed write fails the next call on its file', async () => {
  const path = join(parent, 'rows.f32');
  const rows = new RowFile(path, 3, 'create');
  const chunks = [Float32Array.from([1, 2, 3, 4, 5, 6]), Float32Array.from([7, 8, 9])];
  await rows.write(0, chunks[0]!);
  await rows.write(2, chunks[1]!);
  assert.deepEqual(await rows.read(1, 2), Float32Array.from([4, 5, 6, 7, 8, 9]));
  await rows.close();
  // every write to /dev/full fails with ENOSPC
  const full = new RowFile('/dev/full', 3, 'open');
  await full.write(0, chunks[0]!);
  await assert.rejects(
    full.read(0, 1),
    (e: Error) => e instanceof UserError && /^\/dev\/full: writing rows from 0: ENOSPC/.test(e.message),
  );
  await assert.rejects(full.close(), /ENOSPC/);
});

test('calibration rows are read ahead, and a write over rows read ahead is what the next read returns', async () => {
  const path = join(parent, 'ahead.f32');
  const rows = new RowFile(path, 2, 'create');
  await rows.write(
    0,
    Float32Array.from({ length: 16 }, (_, i) => i),
  );
  const pairs = (...v: number[]): Float32Array => Float32Array.from(v);
  // each read starts the next range's: rows 2-3 are read ahead here, before they are overwritten
  assert.deepEqual(await rows.read(0, 2), pairs(0, 1, 2, 3));
  await rows.write(3, pairs(-6, -7));
  assert.deepEqual(await rows.read(2, 2), pairs(4, 5, -6, -7));
  // a write elsewhere leaves the range read ahead as it is
  await rows.write(0, pairs(-0, -1));
  assert.deepEqual(await rows.read(4, 2), pairs(8, 9, 10, 11));
  assert.deepEqual(await rows.read(6, 2), pairs(12, 13, 14, 15));
  // the read ahead past the end fails unseen; asking for those rows fails
  await assert.rejects(rows.read(8, 1), /ahead\.f32: ends before row 9/);
  assert.deepEqual(await rows.read(0, 1), pairs(-0, -1));
  await rows.close();
});
