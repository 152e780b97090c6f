import { parseArgs } from 'node:util';
import { loadModel } from '../src/models/load.js';
import { llamaContext, median, PROMPT, promptTokens, timeLlamaCpp, timeOurs } from './decode-timing.js';
import { printTable } from './table.js';

/**
 * Decode speed of one of our packed checkpoints against a GGUF of the same weights on llama.cpp (node-llama-cpp),
 * the two loaded in one process and generating in turn, round after round. This VM's memory bandwidth drifts by a
 * fifth from one minute to the next; separate child processes minutes apart (bench:scale) compare moments as much as
 * programs, turns within one process much less. Both greedy, the same number of tokens after the same text (each
 * program's tokenizer), timed from the first new token to the last: decoding, without the prompt's prefill.
 *
 *   npm run bench:duel -- --model DIR --gguf FILE [--rounds 6] [--tokens 32] [--prompt N]
 *
 * --prompt N: the first N tokens of sotu-test as the prompt (default "Once upon a time"). `bench:scale -- --dir DIR`
 * keeps the checkpoints it makes (whole ones with --layers 32): ours w4 g128 with the head at 8 bits (`*-head8`) and
 * llama-quantize's Q4_0 mix (`*-q4_0-mix.gguf`).
 */
const { values: flags } = parseArgs({
  options: {
    model: { type: 'string' },
    gguf: { type: 'string' },
    rounds: { type: 'string', default: '6' },
    tokens: { type: 'string', default: '32' },
    prompt: { type: 'string' },
  },
});
if (!flags.model || !flags.gguf)
  throw new Error('usage: npm run bench:duel -- --model DIR --gguf FILE [--rounds 6] [--tokens 32] [--prompt N]');
const N = Number(flags.tokens);
const { model, tokenizer } = await loadModel(flags.model, { activations: 'int8' });
const { getLlama } = await import('node-llama-cpp');
const llama = await getLlama({ gpu: false, build: 'never' });
const lm = await llama.loadModel({ modelPath: flags.gguf });
const ours = await promptTokens(flags.prompt, (t) => tokenizer.encode(t));
const theirs = await promptTokens(flags.prompt, (t) => lm.tokenize(t));

const oursDecode = async (): Promise<number> => (await timeOurs(model, ours, N)).decodeTokensPerSecond;
async function theirsDecode(): Promise<number> {
  const ctx = await llamaContext(lm, theirs, N);
  const { decodeTokensPerSecond } = await timeLlamaCpp(ctx, theirs, N);
  await ctx.dispose();
  return decodeTokensPerSecond;
}

// a first turn each, untimed: pages faulted in, sessions and contexts made
await oursDecode();
await theirsDecode();
const rows: (string | number)[][] = [];
const ratios: number[] = [];
for (let i = 0; i < Number(flags.rounds); i++) {
  const [a, b] = [await oursDecode(), await theirsDecode()];
  ratios.push(a / b);
  rows.push([i + 1, a.toFixed(2), b.toFixed(2), (a / b).toFixed(3)]);
}
rows.push(['median', '', '', median(ratios).toFixed(3)]);
printTable(
  `Decode tokens/s, ${N} greedy tokens after ${flags.prompt ? `${ours.length} tokens of sotu-test` : `"${PROMPT}"`}, in turns in one process (kv cache: ${model.kvCache(1).dtype})`,
  ['round', `ours (${flags.model})`, `llama.cpp (${flags.gguf})`, 'ours / llama.cpp'],
  rows,
);
process.exit(0);
