/**
 * npm run bench:gguf [-- --types Q4_K,Q3_K] — GPTQ-calibrated GGUF against llama.cpp's own quantization, measured by
 * llama.cpp's own llama-perplexity (KL divergence from the float32 model, 128 windows of 256 tokens of sotu-test):
 * for each block type, llama-quantize plain and with an importance matrix from the same calibration text, and
 * gptq-ts with the library's uniform blockType (the command line's --gguf-type T --pure --token-embedding-type f32
 * --output-tensor-type f32: a bare --gguf-type is llama-quantize's mix). Every file has float32 embeddings and output,
 * and every linear layer the type (--pure), with
 * llama-quantize's fallback for rows that are not whole blocks, so only the linear layers' rounding differs.
 * The llama.cpp tools are built from the source node-llama-cpp ships (scripts/gguf/build-llama-tools.sh), into
 * GPTQ_TS_CACHE/llama-tools, or taken from LLAMA_TOOLS.
 */
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadText } from '../src/calib/datasets.js';
import { BLOCK_LAYOUTS, GGML_TYPES, type BlockType } from '../src/formats/ggml-blocks.js';
import { writeGguf } from '../src/formats/gguf.js';
import { pullStories15m } from '../src/io/stories.js';
import { loadTokenizer } from '../src/models/load.js';
import { readModelConfig } from '../src/models/index.js';
import { PIPELINE_DEFAULTS, quantize } from '../src/pipeline.js';
import { llamaTools, runLlamaTool } from './llama-tools.js';
import { printTable } from './table.js';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const TYPES = (arg('--types')?.split(',') ?? Object.keys(GGML_TYPES)) as BlockType[];
const CHUNKS = Number(arg('--chunks') ?? 128);
const CTX = 256;

const bin = llamaTools();
const runLog = (tool: string, args: string[]): string => runLlamaTool(bin, tool, args);

interface Stats {
  ppl: number;
  pplRatio: number;
  kld: number;
  kldUnc: number;
  kld99: number;
  sameTop: number;
}

/**
 * llama-perplexity over CHUNKS windows of CTX tokens of `text`: writing the float model's logits to `base`, or
 * (`compare`) scoring `model` against them.
 */
const perplexity = (model: string, text: string, base: string, compare: boolean): string =>
  runLog('llama-perplexity', [
    ...['-m', model, '-f', text, '-c', String(CTX), '--chunks', String(CHUNKS), '--kl-divergence-base', base],
    ...(compare ? ['--kl-divergence'] : []),
    ...['-t', '2'],
  ]);

function klStats(file: string, base: string, text: string): Stats {
  const out = perplexity(file, text, base, true);
  const num = (re: RegExp): number => {
    const m = re.exec(out);
    if (!m) throw new Error(`llama-perplexity on ${file}: no ${re.source} in its output:\n${out.slice(-1500)}`);
    return Number(m[1]);
  };
  return {
    ppl: num(/Mean PPL\(Q\)\s*:\s*([\d.]+)/),
    pplRatio: num(/Mean PPL\(Q\)\/PPL\(base\)\s*:\s*([\d.]+)/),
    kld: num(/Mean\s+KLD:\s*([\d.]+)/),
    kldUnc: num(/Mean\s+KLD:\s*[\d.]+\s*±\s*([\d.]+)/),
    kld99: num(/99\.0%\s+KLD:\s*([\d.]+)/),
    sameTop: num(/Same top p:\s*([\d.]+)/),
  };
}

const work = mkdtempSync(join(tmpdir(), 'bench-gguf-'));
try {
  const dir = await pullStories15m();
  const cfg = readModelConfig(dir);
  const tok = loadTokenizer(dir);
  const f32 = join(work, 'f32.gguf');
  await writeGguf(dir, cfg, tok, new Map(), f32, { floatLinears: true });
  const calib = join(work, 'calib.txt');
  const test = join(work, 'test.txt');
  writeFileSync(calib, await loadText('sotu-calib'));
  writeFileSync(test, await loadText('sotu-test'));
  const imatrix = join(work, 'imatrix.gguf');
  runLog('llama-imatrix', ['-m', f32, '-f', calib, '-o', imatrix, '-c', String(CTX), '--chunks', String(CHUNKS), '-t', '2']);
  const base = join(work, 'base.kld');
  perplexity(f32, test, base, false);

  const rows: (string | number)[][] = [];
  // bits per weight over the whole file (float32 embeddings and output included): 32 × size / float32 size
  const f32Size = statSync(f32).size;
  for (const type of TYPES) {
    const files: [string, string][] = [];
    for (const [label, extra] of [
      ['llama-quantize', []],
      ['llama-quantize + imatrix', ['--imatrix', imatrix]],
    ] as [string, string[]][]) {
      const out = join(work, `${type}-${label.includes('imatrix') ? 'imat' : 'plain'}.gguf`);
      runLog('llama-quantize', ['--pure', '--token-embedding-type', 'f32', '--output-tensor-type', 'f32', ...extra, f32, out, type, '2']);
      files.push([label, out]);
    }
    const ours = join(work, `${type}-gptq.gguf`);
    await quantize(dir, { ...PIPELINE_DEFAULTS, blockType: type, format: 'gguf' }, ours);
    files.push(['gptq-ts GPTQ', ours]);
    for (const [label, file] of files) {
      const s = klStats(file, base, test);
      const mb = statSync(file).size / 2 ** 20;
      rows.push([
        type,
        label,
        mb.toFixed(2),
        ((statSync(file).size / f32Size) * 32).toFixed(2),
        s.ppl.toFixed(2),
        s.pplRatio.toFixed(4),
        `${s.kld.toFixed(4)} ± ${s.kldUnc.toFixed(4)}`,
        s.kld99.toFixed(3),
        s.sameTop.toFixed(1),
      ]);
    }
  }
  printTable(
    `stories15M, sotu-test ${CHUNKS} x ${CTX} tokens, llama-perplexity --kl-divergence against the float32 GGUF; imatrix and ` +
      `GPTQ calibrated on sotu-calib (${CHUNKS} x ${CTX}); blocks: ${TYPES.map((t) => `${t} ${BLOCK_LAYOUTS[t].size}`).join(', ')}`,
    ['type', 'file', 'MB', 'bits/weight (all tensors)', 'PPL', 'PPL(Q)/PPL(base)', 'mean KLD', '99% KLD', 'same top %'],
    rows,
  );
} finally {
  rmSync(work, { recursive: true, force: true });
}
