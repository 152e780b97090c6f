import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { pullStories15m } from '../src/io/stories.js';
import { tempDir } from './helpers/temp.js';

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
  assert.ok(j.loadSeconds > 0 && j.loadSeconds < j.seconds + 60, `loadSeconds ${j.loadSeconds}`);
});

test('eval of a model over the loaded-size limit streams its blocks: said on stderr, "streamed" in --json, the same perplexity; generate refuses it', () => {
  const held = cli('eval', model, '--windows', '3', '--json');
  assert.equal(held.code, 0, held.stderr);
  process.env['GPTQ_TS_MAX_LOADED_GB'] = '0.01';
  let streamed, gen;
  try {
    streamed = cli('eval', model, '--windows', '3', '--json', '--ref', model);
    gen = cli('generate', model, 'Once', '--max-tokens', '2');
  } finally {
    delete process.env['GPTQ_TS_MAX_LOADED_GB'];
  }
  assert.equal(streamed.code, 0, streamed.stderr);
  const [h, s] = [JSON.parse(held.stdout), JSON.parse(streamed.stdout)];
  assert.equal(h.streamed, false);
  assert.equal(s.streamed, true);
  assert.equal(s.ppl, h.ppl);
  assert.equal(s.kl, 0, 'against itself, streamed as the reference too');
  // one note for the model, one for the reference
  const notes = streamed.stderr.split('\n').filter((l) => / would hold 0\.0239 GB .*: its blocks are streamed/.test(l));
  assert.equal(notes.length, 2, streamed.stderr);
  assertOneLineError(gen, /stories15M: gptq-ts would hold 0\.0239 GB of its weights .*more than the limit of 0\.01 GB/);
});

test('a run leaves no onnxruntime telemetry file in the temp folder (its mat-debug-<pid>.log, one per process)', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/entry.ts', 'eval', model, '--windows', '1'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.ok(r.pid && !existsSync(join(tmpdir(), `mat-debug-${r.pid}.log`)));
});

test('generate prints the continuation', () => {
  const r = cli('generate', model, 'Once upon a time', '--max-tokens', '8');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Once upon a time, there was a little girl/);
  assert.match(r.stderr, /tokens\/s/);
});

test('bad input gets one clear line and a non-zero exit', () => {
  const dir = tempDir('bad-');
  assertOneLineError(cli('eval', join(dir, 'nope')), /nope: model directory not found/);
  assertOneLineError(cli('eval', model, '--data', 'no-such-set'), /unknown dataset "no-such-set"/);
  assertOneLineError(cli('pull', 'gpt5'), /unknown model "gpt5"/);
  assertOneLineError(cli('generate', model, ''), /empty prompt/);

  const mixtral = join(dir, 'mixtral');
  cpSync(model, mixtral, { recursive: true });
  writeFileSync(join(mixtral, 'config.json'), readFileSync(join(model, 'config.json'), 'utf8').replace('"llama"', '"mixtral"'));
  assertOneLineError(cli('eval', mixtral), /config\.json: unsupported model_type "mixtral"/);

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

test('quantize with the defaults writes the ecosystem default (4 bits, g128, sym, v1) that eval reads, with a JSON summary', () => {
  const out = join(tempDir('q-'), 'w4');
  const r = cli('quantize', model, '--nsamples', '8', '--out', out, '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr.includes('warning'), false, r.stderr);
  const summary = JSON.parse(r.stdout);
  const s = summary.settings;
  assert.deepEqual([s.bits, s.groupSize, s.sym, s.actOrder, s.format], [4, 128, true, false, 'gptq']);
  const qc = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).quantization_config;
  assert.deepEqual([qc.bits, qc.group_size, qc.sym, qc.desc_act, qc.checkpoint_format], [4, 128, true, false, 'gptq']);
  const help = cli('quantize', '--help').stdout;
  for (const d of [
    '--bits <n>  bits per weight: 2, 3, 4 or 8 (default: 4)',
    'the default for --method gptqt) (default: 128)',
    '--sym  symmetric grid (the default)',
  ])
    assert.ok(help.replace(/\s+/g, ' ').includes(d.replace(/\s+/g, ' ')), d);
  assert.equal(summary.layers.length, 42);
  assert.ok(summary.layers.every((l: { loss: number; percdamp: number }) => l.loss > 0 && l.percdamp === 0.01));
  assert.deepEqual(readdirSync(join(out, '..')), ['w4'], 'no temporary leftovers');
  const e = cli('eval', out, '--windows', '2', '--ref', model, '--json');
  assert.equal(e.code, 0, e.stderr);
  const j = JSON.parse(e.stdout);
  assert.ok(j.kl > 0 && j.top1 > 0.3 && j.top1 < 1, `kl ${j.kl} top1 ${j.top1}`);
});

test('quantize refuses impossible options before any work and writes nothing', () => {
  const parent = tempDir('qbad-');
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

test('--version, and commander errors in one line without the help text', () => {
  const v = cli('--version');
  assert.equal(v.code, 0);
  assert.equal(v.stdout.trim(), JSON.parse(readFileSync('package.json', 'utf8')).version);
  assertOneLineError(cli('quantize', model, '--bogus'), /^gptq: error: unknown option '--bogus'$/);
  assertOneLineError(cli('eval'), /^gptq: error: missing required argument 'model'$/);
});

test('text that is empty, binary or not UTF-8 is refused by name', () => {
  const dir = tempDir('text-');
  const files: [string, Uint8Array, RegExp][] = [
    ['empty.txt', new Uint8Array(0), /empty\.txt: empty file/],
    ['model.bin', readFileSync(join(model, 'model.safetensors')).subarray(0, 4096), /model\.bin: binary data \(a NUL byte at offset \d+\)/],
    ['latin1.txt', Buffer.from('caf\xe9 au lait', 'latin1'), /latin1\.txt: not UTF-8 text \(invalid byte sequence near offset 3\)/],
  ];
  for (const [name, bytes, pattern] of files) {
    writeFileSync(join(dir, name), bytes);
    assertOneLineError(cli('eval', model, '--data', join(dir, name)), pattern);
    assertOneLineError(cli('quantize', model, '--data', join(dir, name), '--json'), pattern);
  }
  writeFileSync(join(dir, 'short.txt'), 'Once upon a time.');
  assertOneLineError(cli('eval', model, '--data', join(dir, 'short.txt')), /short\.txt: \d+ tokens, too short for one window of 256/);
  const short = cli('quantize', model, '--data', join(dir, 'short.txt'), '--json');
  assert.notEqual(short.code, 0);
  // after the progress line that says the text is being tokenized
  assert.match(
    short.stderr.trim().split('\n').at(-1)!,
    /^gptq: error: .*short\.txt: \d+ tokens of calibration text, need more than --seqlen 256$/,
  );
});

test('generate stops at end of sequence and says why it stopped', () => {
  const r = cli('generate', model, 'Once upon a time', '--max-tokens', '255', '--json');
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  // stories15M ends its story with BOS well inside the context; nothing is glued on after it
  assert.equal(j.stopReason, 'eos');
  assert.ok(j.tokens < 250, `${j.tokens} tokens`);
  assert.equal(j.text.split('Once upon a time').length, 2, 'one story');
  const short = cli('generate', model, 'Once upon a time', '--max-tokens', '8');
  assert.match(short.stderr, /8 tokens, [\d.]+ tokens\/s, stopped at --max-tokens; the model loaded in [\d.]+ s/);
});

test('the default checkpoint is what the loaders expect; settings they refuse or misread are refused with the reason', () => {
  const parent = tempDir('loaders-');
  const out = join(parent, 'never');
  assertOneLineError(
    cli('quantize', model, '--asym', '--format', 'gptq', '--out', out),
    /--format gptq: an asymmetric grid needs --format gptq_v2: GPTQModel refuses/,
  );
  assertOneLineError(cli('quantize', model, '--damp', '0', '--out', out), /--damp 0 .* transformers, optimum and GPTQModel refuse/);
  assertOneLineError(
    cli('quantize', model, '--group-size', '24', '--out', out),
    /--group-size 24: groups must start on multiples of 16 columns/,
  );
  assertOneLineError(cli('quantize', model, '--sym', '--asym', '--out', out), /--sym and --asym contradict/);
  assert.deepEqual(readdirSync(parent), []);
  // --asym alone picks the format that holds it; --paper is the reference setting
  const r = cli('quantize', model, '--method', 'rtn', '--paper', '--out', join(parent, 'paper'));
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /warning: vLLM and AutoGPTQ do not load asymmetric \(gptq_v2\) checkpoints/);
  const qc = JSON.parse(readFileSync(join(parent, 'paper', 'config.json'), 'utf8')).quantization_config;
  assert.deepEqual([qc.checkpoint_format, qc.sym, qc.group_size, qc.bits], ['gptq_v2', false, -1, 4]);
});
