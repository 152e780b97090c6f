import { availableParallelism } from 'node:os';
import type { LlamaModel, Token } from 'node-llama-cpp';
import { loadText } from '../src/calib/datasets.js';
import { generate } from '../src/infer/generate.js';
import type { Decoder, KvCacheType } from '../src/models/index.js';

/** Generation timed the same way for us and for llama.cpp (bench:scale's generate children, bench:duel). */

export const PROMPT = 'Once upon a time';

/**
 * The generation prompt: PROMPT, or with `length` the first that many tokens of sotu-test (a decode step then
 * reads a long KV cache, as after a pasted document), each program's tokenizer on the same text.
 */
export async function promptTokens<T>(length: string | undefined, encode: (text: string) => T[]): Promise<T[]> {
  if (!length) return encode(PROMPT);
  return encode(await loadText('sotu-test')).slice(0, Number(length));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** Tokens a second with the prompt's prefill (as generate() times itself), and from the first new token on. */
export interface Rates {
  tokensPerSecond: number;
  decodeTokensPerSecond: number;
}

/** Ours: `tokens` greedy tokens after `prompt`. */
export async function timeOurs(
  model: Decoder,
  prompt: number[],
  tokens: number,
  kvCache?: KvCacheType,
): Promise<Rates & { kvCache: string }> {
  let first = 0;
  const r = await generate(model, prompt, {
    maxTokens: tokens,
    stop: [],
    onToken: () => (first ||= performance.now()),
    ...(kvCache ? { kvCache } : {}),
  });
  const decode = (r.tokens.length - 1) / ((performance.now() - first) / 1000);
  return { tokensPerSecond: r.tokensPerSecond, decodeTokensPerSecond: decode, kvCache: r.kvCache };
}

/** A llama.cpp context with room for `prompt` and `tokens` more (node-llama-cpp, all cores). */
export const llamaContext = (lm: LlamaModel, prompt: Token[], tokens: number) =>
  lm.createContext({ contextSize: Math.max(512, prompt.length + tokens + 16), threads: availableParallelism() });

/** llama.cpp: `tokens` greedy tokens after `prompt` on a fresh context, timed as timeOurs times ours. */
export async function timeLlamaCpp(ctx: Awaited<ReturnType<typeof llamaContext>>, prompt: Token[], tokens: number): Promise<Rates> {
  let n = 0;
  let first = 0;
  const t0 = performance.now();
  for await (const t of ctx.getSequence().evaluate(prompt, { temperature: 0 })) {
    void t;
    first ||= performance.now();
    if (++n === tokens) break;
  }
  const end = performance.now();
  return { tokensPerSecond: n / ((end - t0) / 1000), decodeTokensPerSecond: (n - 1) / ((end - first) / 1000) };
}
