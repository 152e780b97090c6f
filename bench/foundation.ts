import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import llamaTokenizer from 'llama-tokenizer-js';
import { loadText } from '../src/calib/datasets.js';
import { pullStories15m } from '../src/io/stories.js';
import { tokenizerFromJson } from '../src/io/tokenizer.js';
import { Decoder } from '../src/models/index.js';
import { loadTokenizer } from '../src/models/load.js';
import { ortBackend } from '../src/tensor/ort.js';
import { refBackend } from '../src/tensor/ref.js';
import { printTable, timeMs } from './table.js';

/** Tokenizer throughput and stories15M prefill throughput, measured in one run. */
const dir = await pullStories15m();
const corpus = await loadText('sotu-calib');
const mb = Buffer.byteLength(corpus) / 1e6;

let t = performance.now();
const tok = loadTokenizer(dir);
const loadMs = performance.now() - t;
t = performance.now();
const ids = tok.encode(corpus);
const oursS = (performance.now() - t) / 1000;

// the JS oracle is far slower: time it on a slice and report MB/s
const slice = corpus.slice(0, 300_000);
t = performance.now();
llamaTokenizer.encode(slice);
const oracleS = (performance.now() - t) / 1000;
const sliceMb = Buffer.byteLength(slice) / 1e6;

printTable(
  'Tokenizer (Llama SentencePiece BPE), sotu-calib corpus',
  ['tokenizer', 'text MB', 'seconds', 'MB/s', 'tokens'],
  [
    ['gptq-ts (cold, whole corpus)', mb.toFixed(2), oursS.toFixed(2), (mb / oursS).toFixed(2), ids.length],
    ['llama-tokenizer-js (300 kB slice)', sliceMb.toFixed(2), oracleS.toFixed(2), (sliceMb / oracleS).toFixed(3), '-'],
  ],
);
console.log(
  `tokenizer.json load: ${loadMs.toFixed(0)} ms; speed-up over llama-tokenizer-js: ${(mb / oursS / (sliceMb / oracleS)).toFixed(0)}x`,
);

await tokenizerTable(corpus);

/**
 * Every fixture tokenizer (test/fixtures/tokenizers) on the same corpus, one encode() of the whole text each,
 * beside the Python `tokenizers` library measured in this run when a Python with it is at hand
 * ($GPTQ_TS_PYTHON, else python3): its encode() of the whole text, and encode_batch() over the lines (threads).
 */
async function tokenizerTable(text: string): Promise<void> {
  const root = join(import.meta.dirname, '..', 'test', 'fixtures', 'tokenizers');
  const names = ['llama2', 'mistral', 'llama3', 'qwen3', 'gemma3', 'gpt2', 'deepseek_v3'];
  const textMb = Buffer.byteLength(text) / 1e6;
  const ours = new Map<string, { load: number; mbps: number; tokens: number }>();
  for (const name of names) {
    const json = JSON.parse(gunzipSync(readFileSync(join(root, name, 'tokenizer.json.gz'))).toString('utf8')) as Record<string, unknown>;
    let t0 = performance.now();
    const tk = tokenizerFromJson(json, {}, name);
    const load = performance.now() - t0;
    t0 = performance.now();
    const n = tk.encode(text).length;
    ours.set(name, { load, mbps: textMb / ((performance.now() - t0) / 1000), tokens: n });
  }
  const py = pythonTokenizers(
    text,
    names.map((n) => `${n}=${join(root, n, 'tokenizer.json.gz')}`),
  );
  printTable(
    `Tokenizers on sotu-calib (${textMb.toFixed(2)} MB), one encode of the whole text, cold${py.version ? `; Python tokenizers ${py.version} in the same run` : ''}`,
    ['tokenizer', 'load ms', 'gptq-ts MB/s', 'Python MB/s', 'Python batch MB/s', 'tokens', 'same ids count'],
    names.map((n) => {
      const o = ours.get(n)!;
      const p = py.rows.get(n);
      return [
        n,
        o.load.toFixed(0),
        o.mbps.toFixed(2),
        p ? p.mbps.toFixed(2) : '-',
        p ? p.batch_mbps.toFixed(2) : '-',
        o.tokens,
        p ? String(p.tokens === o.tokens) : '-',
      ];
    }),
  );
  if (!py.version) console.log(`Python tokenizers: not measured (${py.why})`);
}

function pythonTokenizers(
  text: string,
  args: string[],
): { version?: string; why?: string; rows: Map<string, { mbps: number; batch_mbps: number; tokens: number }> } {
  const rows = new Map<string, { mbps: number; batch_mbps: number; tokens: number }>();
  const python = process.env['GPTQ_TS_PYTHON'] ?? 'python3';
  const probe = spawnSync(python, ['-c', 'import tokenizers'], { encoding: 'utf8' });
  if (probe.status !== 0) return { why: `${python} has no \`tokenizers\`; set GPTQ_TS_PYTHON to one that has`, rows };
  const scratch = mkdtempSync(join(tmpdir(), 'bench-tok-'));
  const file = join(scratch, 'corpus.txt');
  writeFileSync(file, text);
  const script = join(import.meta.dirname, '..', 'scripts', 'tokenizers', 'bench.py');
  const r = spawnSync(python, [script, file, ...args], { encoding: 'utf8', maxBuffer: 1 << 24 });
  rmSync(scratch, { recursive: true, force: true });
  if (r.status !== 0) return { why: `bench.py failed: ${r.stderr.trim().split('\n').pop()}`, rows };
  let version: string | undefined;
  for (const line of r.stdout.trim().split('\n')) {
    const j = JSON.parse(line) as { name: string; version: string; mbps: number; batch_mbps: number; tokens: number };
    rows.set(j.name, j);
    version = j.version;
  }
  return version ? { version, rows } : { why: 'no output', rows };
}

const rows: (string | number)[][] = [];
for (const [backend, batch, reps] of [
  [ortBackend, 8, 5],
  [refBackend, 1, 1],
] as const) {
  const model = await Decoder.load(dir, backend);
  const seq = 256;
  const tokens = ids.slice(0, batch * seq);
  const ms = await timeMs(() => model.hidden(tokens, batch, seq), reps);
  rows.push([backend.name, `${batch} x ${seq}`, ms.toFixed(0), ((batch * seq) / (ms / 1000)).toFixed(0)]);
}
printTable('stories15M prefill (all decoder blocks + final norm, no LM head)', ['backend', 'batch', 'ms', 'tokens/s'], rows);
