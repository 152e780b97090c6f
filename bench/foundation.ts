import llamaTokenizer from 'llama-tokenizer-js';
import { loadText } from '../src/calib/datasets.js';
import { pullStories15m } from '../src/io/stories.js';
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
