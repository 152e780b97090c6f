import type { Decoder, KvCacheType } from '../models/index.js';
import { makeSampler, type SamplingOptions } from './sampling.js';

export interface GenerateOptions extends SamplingOptions {
  maxTokens?: number;
  /** called with each new token id as soon as it is chosen */
  onToken?: (id: number) => void;
  /**
   * token ids that end the text (default: the model's EOS, and its BOS, which starts a new document: models
   * trained on concatenated documents, as llama2.c's are, emit it where a text ends)
   */
  stop?: number[];
  /** the KV cache's storage (Decoder.kvCache): float16 where the kernels are built (default), or float32 */
  kvCache?: KvCacheType;
}

/** Why generation ended: an end-of-sequence token, --max-tokens, or the model's context being full. */
export type StopReason = 'eos' | 'max-tokens' | 'context';

export interface GenerateResult {
  tokens: number[];
  promptTokens: number;
  seconds: number;
  tokensPerSecond: number;
  stopReason: StopReason;
  /** what the KV cache was stored in */
  kvCache: 'float16' | 'float32';
}

/** A prompt must leave room in the context for at least one new token. */
export function checkPrompt(model: Decoder, prompt: number[]): void {
  const ctx = model.cfg.maxPositions;
  if (prompt.length === 0) throw new RangeError('empty prompt: give at least one token');
  if (prompt.length >= ctx) throw new RangeError(`prompt has ${prompt.length} tokens but the context holds ${ctx}`);
}

/** Decoding with a KV cache: one prefill of the prompt, then one position per step; greedy unless a temperature is given. */
export async function generate(model: Decoder, prompt: number[], opts: GenerateOptions = {}): Promise<GenerateResult> {
  const ctx = model.cfg.maxPositions;
  checkPrompt(model, prompt);
  const requested = opts.maxTokens ?? 256;
  const maxTokens = Math.min(requested, ctx - prompt.length);
  const choose = makeSampler(opts);
  const stop = new Set(opts.stop ?? [...model.cfg.eosTokenIds, ...(model.cfg.bosTokenId !== undefined ? [model.cfg.bosTokenId] : [])]);
  const cache = model.kvCache(ctx, opts.kvCache);
  // a load step, not part of the tokens/s
  model.prepareHead();
  const t0 = performance.now();
  let h = await model.hidden(prompt, 1, prompt.length, cache);
  const D = model.cfg.embedDim;
  const out: number[] = [];
  let stopReason: StopReason = maxTokens < requested ? 'context' : 'max-tokens';
  while (out.length < maxTokens) {
    const last = h.subarray((h.length / D - 1) * D);
    const next = choose(await model.logits(last, 1));
    if (stop.has(next)) {
      stopReason = 'eos';
      break;
    }
    out.push(next);
    opts.onToken?.(next);
    if (out.length === maxTokens) break;
    h = await model.hidden([next], 1, 1, cache);
  }
  const seconds = (performance.now() - t0) / 1000;
  return { tokens: out, promptTokens: prompt.length, seconds, tokensPerSecond: out.length / seconds, stopReason, kvCache: cache.dtype };
}
