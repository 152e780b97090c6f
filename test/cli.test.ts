import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { pullStories15m } from '../src/io/stories.js';

const cli = (...args: string[]): { code: number | null; stdout: string; stderr: string } => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

/** Bad input: a non-zero exit and exactly one line on stderr that names the culprit. */
function assertOneLineError(r: ReturnType<typeof cli>, pattern: RegExp): void {
  assert.notEqual(r.code, 0);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0]!, pattern);
}

let model: string;
before(async () => {
  model = await pullStories15m();
});

test('pull prints the model directory as its last line', () => {
  const r = cli('pull', 'stories15m');
  assert.equal(r.code, 0);
  assert.equal(r.stdout.trim().split('\n').at(-1), model);
});

test('eval --json on a real model gives a machine-readable summary', () => {
  const r = cli('eval', model, '--data', 'sotu-test', '--windows', '2', '--json');
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  assert.equal(j.windows, 2);
  assert.ok(j.ppl > 100 && j.ppl < 5000);
});

test('generate prints the continuation', () => {
  const r = cli('generate', model, 'Once upon a time', '--max-tokens', '8');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Once upon a time, there was a little girl/);
  assert.match(r.stderr, /tokens\/s/);
});

test('bad input gets one clear line and a non-zero exit', () => {
  const dir = mkdtempSync(join(tmpdir(), 'bad-'));
  assertOneLineError(cli('eval', join(dir, 'nope')), /nope: model directory not found/);
  assertOneLineError(cli('eval', model, '--data', 'no-such-set'), /unknown dataset "no-such-set"/);
  assertOneLineError(cli('pull', 'gpt5'), /unknown model "gpt5"/);
  assertOneLineError(cli('generate', model, ''), /empty prompt/);

  const opt = join(dir, 'opt');
  cpSync(model, opt, { recursive: true });
  writeFileSync(join(opt, 'config.json'), readFileSync(join(model, 'config.json'), 'utf8').replace('"llama"', '"opt"'));
  assertOneLineError(cli('eval', opt), /config\.json: unsupported model_type "opt"/);

  const wrongShape = join(dir, 'shape');
  cpSync(model, wrongShape, { recursive: true });
  writeFileSync(
    join(wrongShape, 'config.json'),
    readFileSync(join(model, 'config.json'), 'utf8').replace('"intermediate_size": 768', '"intermediate_size": 512'),
  );
  assertOneLineError(
    cli('eval', wrongShape),
    /model\.safetensors: tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[768,288\] but the config implies \[512,288\]/,
  );

  const truncated = join(dir, 'truncated');
  cpSync(model, truncated, { recursive: true });
  const st = readFileSync(join(model, 'model.safetensors'));
  writeFileSync(join(truncated, 'model.safetensors'), st.subarray(0, st.length >> 1));
  assertOneLineError(cli('eval', truncated), /model\.safetensors: tensor .* extends past the end of the file/);

  assertOneLineError(cli('convert', 'llama2c', join(dir, 'missing.bin'), join(dir, 'out')), /missing\.bin: file not found/);
  writeFileSync(join(dir, 'short.bin'), Buffer.alloc(100));
  assertOneLineError(cli('convert', 'llama2c', join(dir, 'short.bin'), join(dir, 'out')), /short\.bin: not a llama2\.c checkpoint/);
});

test('quantize writes a fake-quant model that eval reads, with a JSON summary', () => {
  const out = join(mkdtempSync(join(tmpdir(), 'q-')), 'w4');
  const r = cli('quantize', model, '--bits', '4', '--group-size', '128', '--nsamples', '8', '--out', out, '--json');
  assert.equal(r.code, 0, r.stderr);
  const summary = JSON.parse(r.stdout);
  assert.equal(summary.layers.length, 42);
  assert.ok(summary.layers.every((l: { loss: number; percdamp: number }) => l.loss > 0 && l.percdamp === 0.01));
  assert.deepEqual(readdirSync(join(out, '..')), ['w4'], 'no temporary leftovers');
  const e = cli('eval', out, '--windows', '2', '--ref', model, '--json');
  assert.equal(e.code, 0, e.stderr);
  const j = JSON.parse(e.stdout);
  assert.ok(j.kl > 0 && j.top1 > 0.3 && j.top1 < 1, `kl ${j.kl} top1 ${j.top1}`);
});

test('quantize refuses impossible options before any work and writes nothing', () => {
  const parent = mkdtempSync(join(tmpdir(), 'qbad-'));
  const out = join(parent, 'never');
  assertOneLineError(cli('quantize', model, '--bits', '5', '--out', out), /--bits 5 is not supported/);
  assertOneLineError(cli('quantize', model, '--group-size', '1000', '--out', out), /--group-size 1000 is larger than/);
  assertOneLineError(cli('quantize', model, '--nsamples', '0', '--out', out), /--nsamples 0/);
  assertOneLineError(cli('quantize', model, '--seqlen', '4096', '--out', out), /--seqlen 4096 must be in 2\.\.256/);
  assertOneLineError(cli('quantize', model, '--method', 'awq', '--out', out), /--method "awq" is not one of gptq, gptqv2, gptqt, rtn/);
  assertOneLineError(cli('quantize', model, '--data', 'nowhere', '--out', out), /unknown dataset "nowhere"/);
  assert.equal(existsSync(out), false);
  assert.deepEqual(readdirSync(parent), []);
});
