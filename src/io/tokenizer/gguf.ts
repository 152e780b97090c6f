import { fail } from '../errors.js';
import { mergesFromScores } from './spm.js';
import type { SpecialIds } from './pipeline.js';

/**
 * The tokenizer.* metadata of llama.cpp's GGUF files, both ways: the names and types they use (shared with the GGUF
 * writer, formats/gguf.ts), and a tokenizer.json that runs as llama.cpp runs the file's vocabulary, built from its
 * metadata the way transformers' integrations/ggml.py converts one (GGUFLlamaConverter, GGUFGPTConverter), for the
 * two vocabulary types llama.cpp's converter writes for the families we run: `llama` (SentencePiece BPE with byte
 * fallback: tokens, scores, types) and `gpt2` (byte-level BPE: tokens and merges, with tokenizer.ggml.pre naming the
 * pre-tokenizer). Anything else is refused by name.
 */

/** llama.cpp's token types (llama_token_type) as GGUF's tokenizer.ggml.token_type stores them */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/**
 * llama.cpp's byte-level BPE pre-tokenizers by the Hugging Face pre_tokenizer each one implements (as in the real
 * tokenizer.json files of GPT-2, Llama 3, Qwen 2/3 and DeepSeek-V3). trim_offsets only moves offsets, not ids.
 */
const split = (regex: string): object => ({ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false });
const byteLevel = (useRegex: boolean): object => ({ type: 'ByteLevel', add_prefix_space: false, use_regex: useRegex });
const sequence = (...p: object[]): object => ({ type: 'Sequence', pretokenizers: [...p, byteLevel(false)] });
export const PRE_TOKENIZERS: { name: string; spec: object; ignoreMerges: boolean }[] = [
  { name: 'gpt-2', spec: byteLevel(true), ignoreMerges: false },
  {
    name: 'llama-bpe',
    spec: sequence(
      split(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      ),
    ),
    ignoreMerges: true,
  },
  {
    name: 'qwen2',
    spec: sequence(
      split(
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      ),
    ),
    ignoreMerges: false,
  },
  {
    name: 'deepseek-v3',
    spec: sequence(
      split('\\p{N}{1,3}'),
      split('[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+'),
      split(
        '[!"#$%&\'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+',
      ),
    ),
    ignoreMerges: false,
  },
];

type Json = Record<string, unknown>;

/** What the importer reads of a GGUF file (formats/gguf-read.ts's GgufFile). */
export interface GgufVocabSource {
  readonly path: string;
  readonly metadata: ReadonlyMap<string, unknown>;
  string(key: string): string | undefined;
  number(key: string): number | undefined;
  bool(key: string): boolean | undefined;
  array(key: string, elem: 'number' | 'string'): unknown[] | undefined;
}

/**
 * The tokenizer.* keys this importer reads; the others llama.cpp's converter writes are refused by name below. Some
 * of these do not change how text is tokenized: ids of separator/cls/mask (BERT-style files) and fill-in-the-middle
 * tokens (code models), and remove_extra_whitespaces, which only llama.cpp's UGM (T5) tokenizer reads
 * (llama-vocab.cpp).
 */
const READ_KEYS = new Set([
  'model',
  'pre',
  'tokens',
  'scores',
  'token_type',
  'merges',
  'bos_token_id',
  'eos_token_id',
  'eot_token_id',
  'eom_token_id',
  'unknown_token_id',
  'padding_token_id',
  'seperator_token_id',
  'cls_token_id',
  'mask_token_id',
  'fim_pre_token_id',
  'fim_suf_token_id',
  'fim_mid_token_id',
  'fim_pad_token_id',
  'fim_rep_token_id',
  'fim_sep_token_id',
  'prefix_token_id',
  'suffix_token_id',
  'middle_token_id',
  'add_bos_token',
  'add_eos_token',
  'add_space_prefix',
  'remove_extra_whitespaces',
]);

const SPACE = '\u2581';

/** A tokenizer.json (and its special ids and merges) that tokenizes as llama.cpp does with this file's vocabulary. */
export function ggufTokenizerJson(m: GgufVocabSource): {
  json: Json;
  special: SpecialIds;
  merges?: { left: string; right: string; rank: number }[];
} {
  const where = m.path;
  for (const key of m.metadata.keys()) {
    if (!key.startsWith('tokenizer.')) continue;
    if (key === 'tokenizer.chat_template' || key.startsWith('tokenizer.chat_template.')) continue;
    if (!key.startsWith('tokenizer.ggml.') || !READ_KEYS.has(key.slice('tokenizer.ggml.'.length)))
      fail(`${where}: metadata ${key} is not implemented, refusing rather than tokenizing differently`);
  }
  const k = (name: string): string => `tokenizer.ggml.${name}`;
  const model = m.string(k('model'));
  if (model === undefined) fail(`${where}: no tokenizer.ggml.model (a GGUF without a vocabulary)`);
  const tokens = m.array(k('tokens'), 'string') as string[] | undefined;
  if (!tokens || tokens.length === 0) fail(`${where}: no tokenizer.ggml.tokens`);
  const types = (m.array(k('token_type'), 'number') as number[] | undefined) ?? tokens.map(() => TOKEN_TYPE.NORMAL);
  if (types.length !== tokens.length) fail(`${where}: tokenizer.ggml.token_type has ${types.length} entries for ${tokens.length} tokens`);
  const id = (name: string): number | undefined => {
    const v = m.number(k(name));
    if (v !== undefined && (!Number.isInteger(v) || v < 0 || v >= tokens.length))
      fail(`${where}: tokenizer.ggml.${name} ${v} is not a token id (the vocabulary has ${tokens.length})`);
    return v;
  };
  // llama.cpp matches control, user-defined and unknown tokens in the text before tokenizing the rest
  const added = tokens.flatMap((content, i) =>
    types[i] === TOKEN_TYPE.CONTROL || types[i] === TOKEN_TYPE.USER_DEFINED || types[i] === TOKEN_TYPE.UNKNOWN
      ? [
          {
            id: i,
            content,
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: false,
            special: types[i] !== TOKEN_TYPE.USER_DEFINED,
          },
        ]
      : [],
  );
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => {
    if (!Object.hasOwn(vocab, t)) vocab[t] = i;
  });
  const eos = ['eos_token_id', 'eot_token_id', 'eom_token_id'].map(id).filter((x): x is number => x !== undefined);
  const special: SpecialIds = { eos: [...new Set(eos)] };
  const bos = id('bos_token_id');
  const pad = id('padding_token_id');
  const unk = id('unknown_token_id');
  if (bos !== undefined) special.bos = bos;
  if (pad !== undefined) special.pad = pad;
  const template = m.string('tokenizer.chat_template');
  if (template !== undefined) special.chatTemplate = template;
  special.addEos = m.bool(k('add_eos_token')) ?? false;
  const base = { version: '1.0', truncation: null, padding: null, added_tokens: added, post_processor: null };

  if (model === 'llama') {
    const scores = m.array(k('scores'), 'number') as number[] | undefined;
    if (!scores || scores.length !== tokens.length) fail(`${where}: a llama vocabulary needs tokenizer.ggml.scores, one per token`);
    const pre = m.string(k('pre'));
    if (pre !== undefined && pre !== 'default')
      fail(`${where}: tokenizer.ggml.pre ${JSON.stringify(pre)} with a llama vocabulary is not implemented`);
    // llama.cpp's defaults for a SentencePiece vocabulary: a leading space, and BOS
    const prefix = m.bool(k('add_space_prefix')) ?? true;
    special.addBos = m.bool(k('add_bos_token')) ?? true;
    const replace = { type: 'Replace', pattern: { String: ' ' }, content: SPACE };
    // llama.cpp merges the adjacent pair whose joined text is a token with the best score, whatever its type
    const merges = mergesFromScores(tokens, scores, () => true);
    const json = {
      ...base,
      normalizer: prefix ? { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SPACE }, replace] } : replace,
      pre_tokenizer: null,
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: SPACE }, content: ' ' },
          { type: 'ByteFallback' },
          { type: 'Fuse' },
          ...(prefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
        ],
      },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: unk !== undefined ? tokens[unk] : null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: types.includes(TOKEN_TYPE.BYTE),
        ignore_merges: false,
        vocab,
        merges: merges.map((x) => `${x.left} ${x.right}`),
      },
    };
    return { json, special, merges };
  }
  if (model === 'gpt2') {
    const preName = m.string(k('pre'));
    const pre = PRE_TOKENIZERS.find((p) => p.name === preName);
    if (!pre)
      fail(
        `${where}: tokenizer.ggml.pre ${JSON.stringify(preName ?? '(missing)')} is not implemented (gptq-ts reads ${PRE_TOKENIZERS.map((p) => p.name).join(', ')})`,
      );
    const merges = m.array(k('merges'), 'string') as string[] | undefined;
    if (!merges) fail(`${where}: a gpt2 vocabulary needs tokenizer.ggml.merges`);
    // llama.cpp's default where the file is silent: BOS for llama-bpe (Llama 3) only (llama-vocab.cpp, load)
    special.addBos = m.bool(k('add_bos_token')) ?? pre.name === 'llama-bpe';
    const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
    const json = {
      ...base,
      normalizer: null,
      pre_tokenizer: pre.spec,
      decoder: byteLevel,
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: pre.ignoreMerges,
        vocab,
        merges,
      },
    };
    return { json, special };
  }
  return fail(`${where}: tokenizer.ggml.model ${JSON.stringify(model)} is not implemented (gptq-ts reads llama and gpt2 vocabularies)`);
}
