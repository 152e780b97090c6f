import { dirname } from 'node:path';
import { fail } from './errors.js';
import { readTokenizerConfigs, tokenizerFromJson } from './tokenizer/load.js';
import { HfTokenizer, type DecodeOptions, type EncodeOptions, type TokenizerKind } from './tokenizer/pipeline.js';
import { existsSync, readFileSync } from 'node:fs';
import { ggufTokenizerJson, type GgufVocabSource } from './tokenizer/gguf.js';
import { mergesFromScores } from './tokenizer/spm.js';

export { HfTokenizer, type DecodeOptions, type EncodeOptions, type SpecialIds, type TokenizerKind } from './tokenizer/pipeline.js';
export { loadTokenizerDir, readTokenizerConfigs, tokenizerFromJson, type TokenizerConfigs } from './tokenizer/load.js';

/**
 * What the rest of the pipeline needs of a tokenizer. `encode` adds the tokenizer's own special tokens (BOS for
 * Llama 2/3 and Gemma, none for Qwen) unless told not to; `decode` leaves special tokens out by default.
 */
export interface Tokenizer {
  /** the file it was read from, for messages */
  readonly source: string;
  readonly kind: TokenizerKind;
  readonly vocabSize: number;
  /** BOS from tokenizer_config.json / generation_config.json / the post-processor; undefined when none */
  readonly bosId: number | undefined;
  /** every EOS id (tokenizer_config.json's eos_token first, then generation_config.json's eos_token_id list) */
  readonly eosIds: readonly number[];
  readonly padId: number | undefined;
  readonly unkId: number | undefined;
  /** whether encode() starts with BOS, as the tokenizer's own settings say */
  readonly addsBos: boolean;
  /** tokenizer_config.json's chat_template (or chat_template.jinja) */
  readonly chatTemplate: string | undefined;
  /** SentencePiece byte-fallback ids <0xXX> (empty for byte-level tokenizers) */
  readonly byteFallbackIds: ReadonlySet<number>;
  encode(text: string, opts?: EncodeOptions): number[];
  decode(ids: ArrayLike<number>, opts?: DecodeOptions): string;
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
  isSpecial(id: number): boolean;
}

/**
 * A warning for ids of which most are the unknown token or SentencePiece byte-fallback pieces: the text is
 * mostly outside the tokenizer's vocabulary (another language or script, binary data, or the wrong tokenizer),
 * so a perplexity over it says little. undefined when the ids look ordinary.
 */
export function tokenizationWarning(tok: Tokenizer, ids: ArrayLike<number>, what: string, threshold = 0.5): string | undefined {
  let counted = 0;
  let unk = 0;
  let bytes = 0;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (tok.isSpecial(id) && id !== tok.unkId) continue;
    counted++;
    if (id === tok.unkId) unk++;
    else if (tok.byteFallbackIds.has(id)) bytes++;
  }
  if (counted === 0 || (unk + bytes) / counted <= threshold) return undefined;
  const pct = (n: number): string => `${((100 * n) / counted).toFixed(0)}%`;
  return `${what}: ${pct(unk + bytes)} of its ${counted} tokens are unknown (${pct(unk)}) or byte-fallback (${pct(bytes)}) ids of ${tok.source}; the text is mostly outside this tokenizer's vocabulary, so the perplexity says little`;
}

export { renderChat, type ChatMessage } from './tokenizer/chat.js';

const SPACE = '\u2581';

/**
 * The tokenizer.json pipeline under its historical name, with the llama2.c reader. Llama 2's SentencePiece BPE
 * with byte fallback is the tokenizer.json pipeline with a Prepend+Replace normalizer and no pre-tokenizer.
 */
export class LlamaTokenizer extends HfTokenizer {
  /** tokenizer.json at path, with the configuration files beside it */
  static fromTokenizerJson(path: string): LlamaTokenizer {
    if (!existsSync(path)) fail(`${path}: tokenizer file not found`);
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
    } catch {
      fail(`${path}: not valid JSON`);
    }
    return tokenizerFromJson(json, readTokenizerConfigs(dirname(path)), path);
  }

  /** The vocabulary a GGUF file's tokenizer.* metadata holds, run as llama.cpp runs it (see tokenizer/gguf.ts). */
  static fromGguf(meta: GgufVocabSource): LlamaTokenizer {
    const t = ggufTokenizerJson(meta);
    return new LlamaTokenizer(meta.path, t.json, t.special, t.merges);
  }

  /** llama2.c tokenizer.bin: int32 max_token_length, then per token: f32 score, int32 length, UTF-8 bytes. */
  static fromLlama2cBin(bytes: Uint8Array, what: string, vocabSize = 32000): LlamaTokenizer {
    const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const pieces: string[] = [];
    const scores: number[] = [];
    let off = 4;
    for (let i = 0; i < vocabSize; i++) {
      if (off + 8 > buf.length) fail(`${what}: truncated tokenizer.bin (token ${i} of ${vocabSize})`);
      const score = buf.readFloatLE(off);
      const len = buf.readInt32LE(off + 4);
      off += 8;
      if (len < 0 || off + len > buf.length) fail(`${what}: corrupt tokenizer.bin (token ${i} has length ${len})`);
      let piece = buf.toString('utf8', off, off + len);
      off += len;
      // the llama2.c exporter wrote "▁" as " " and wrapped BOS/EOS in newlines
      if (piece === '\n<s>\n') piece = '<s>';
      else if (piece === '\n</s>\n') piece = '</s>';
      // ids 3..258 are the byte-fallback tokens; this exporter stored them as the byte's own character
      const byte = i - 3;
      if (byte >= 0 && byte < 256 && piece.length === 1 && piece.charCodeAt(0) === byte) piece = byteName(byte);
      else piece = piece.replaceAll(' ', SPACE);
      pieces.push(piece);
      scores.push(score);
    }
    const merges = mergesFromScores(pieces, scores);
    return new LlamaTokenizer(what, llama2TokenizerJson(pieces, merges), { bos: 1, eos: [2] }, merges, true);
  }
}

/** A Hugging Face tokenizer.json of Llama 2's "legacy" layout for these pieces and merges. */
function llama2TokenizerJson(pieces: string[], merges: { left: string; right: string }[]): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  pieces.forEach((p, i) => {
    // own keys only: pieces named "constructor" or "toString" are tokens like any other
    if (!Object.hasOwn(vocab, p)) vocab[p] = i;
  });
  const special = (id: number): object => ({
    id,
    content: pieces[id],
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0), special(1), special(2)],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: SPACE },
        { type: 'Replace', pattern: { String: ' ' }, content: SPACE },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SPACE }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: pieces[0],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: merges.map((m) => `${m.left} ${m.right}`),
    },
  };
}

function byteName(b: number): string {
  return `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
}
