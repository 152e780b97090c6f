import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fail } from '../errors.js';
import { HfTokenizer, type SpecialIds } from './pipeline.js';

type Json = Record<string, unknown>;

/** The configuration files beside a tokenizer that say which tokens are BOS/EOS/PAD and whether BOS is added. */
export interface TokenizerConfigs {
  tokenizerConfig?: Json;
  generationConfig?: Json;
  specialTokensMap?: Json;
  /** chat_template.jinja, which newer transformers write instead of tokenizer_config.json's chat_template */
  chatTemplateFile?: string;
}

function readJson(path: string): Json {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    fail(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    const j = JSON.parse(text) as unknown;
    if (!j || typeof j !== 'object' || Array.isArray(j)) fail(`${path}: not a JSON object`);
    return j as Json;
  } catch (e) {
    if (e instanceof SyntaxError) fail(`${path}: not valid JSON (${e.message})`);
    throw e;
  }
}

function readIfExists(path: string): Json | undefined {
  return existsSync(path) ? readJson(path) : undefined;
}

/** tokenizer_config.json, generation_config.json, special_tokens_map.json and chat_template.jinja in dir, where present. */
export function readTokenizerConfigs(dir: string): TokenizerConfigs {
  const c: TokenizerConfigs = {};
  const tc = readIfExists(join(dir, 'tokenizer_config.json'));
  const gc = readIfExists(join(dir, 'generation_config.json'));
  const sm = readIfExists(join(dir, 'special_tokens_map.json'));
  if (tc) c.tokenizerConfig = tc;
  if (gc) c.generationConfig = gc;
  if (sm) c.specialTokensMap = sm;
  const jinja = join(dir, 'chat_template.jinja');
  if (existsSync(jinja)) c.chatTemplateFile = readFileSync(jinja, 'utf8');
  return c;
}

/** A token given as "text" or {content: "text"} (AddedToken), or null. */
function tokenText(v: unknown): string | null | undefined {
  if (v === null) return null;
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json)['content'] === 'string') return (v as Json)['content'] as string;
  return undefined;
}

function idList(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

/**
 * BOS/EOS/PAD as the model's files say: tokenizer_config.json first (a key given as null means none), then
 * special_tokens_map.json, then generation_config.json (whose eos_token_id may list several ids, all of which
 * stop generation), and for BOS last the post-processor's leading special token.
 */
export function specialIds(json: Json, c: TokenizerConfigs, source: string): SpecialIds {
  const tc = c.tokenizerConfig ?? {};
  const sm = c.specialTokensMap ?? {};
  const gc = c.generationConfig ?? {};
  const ids = new Map<string, number>();
  const model = (json['model'] ?? {}) as Json;
  for (const [p, id] of Object.entries((model['vocab'] ?? {}) as Record<string, number>)) ids.set(p, id);
  for (const t of (json['added_tokens'] as Json[]) ?? []) ids.set(t['content'] as string, t['id'] as number);
  const lookup = (key: string): number | null | undefined => {
    for (const [src, name] of [
      [tc, 'tokenizer_config.json'],
      [sm, 'special_tokens_map.json'],
    ] as const) {
      if (!(key in src)) continue;
      const text = tokenText(src[key]);
      if (text === null) return null;
      if (text === undefined) fail(`${join(dirname(source), name)}: ${key} ${JSON.stringify(src[key])} is not a token`);
      const id = ids.get(text);
      if (id === undefined) fail(`${join(dirname(source), name)}: ${key} ${JSON.stringify(text)} is not in ${source}`);
      return id;
    }
    return undefined;
  };
  let bos = lookup('bos_token');
  if (bos === undefined) bos = idList(gc['bos_token_id'])[0];
  if (bos === undefined) {
    // a template's first special token before $A
    const pp = json['post_processor'] as Json | null;
    const procs = pp?.['type'] === 'Sequence' ? ((pp['processors'] as Json[]) ?? []) : pp ? [pp] : [];
    for (const p of procs) {
      const first = ((p['single'] as Json[]) ?? [])[0]?.['SpecialToken'] as Json | undefined;
      const st = first && ((p['special_tokens'] as Record<string, { ids?: number[] }>) ?? {})[first['id'] as string];
      if (st?.ids?.length === 1) bos = st.ids[0];
    }
  }
  const eos: number[] = [];
  const e0 = lookup('eos_token');
  if (typeof e0 === 'number') eos.push(e0);
  for (const id of idList(gc['eos_token_id'])) if (!eos.includes(id)) eos.push(id);
  let pad = lookup('pad_token');
  if (pad === undefined) pad = idList(gc['pad_token_id'])[0];
  const s: SpecialIds = { eos };
  if (typeof bos === 'number') s.bos = bos;
  if (typeof pad === 'number') s.pad = pad;
  if (typeof tc['add_bos_token'] === 'boolean') s.addBos = tc['add_bos_token'];
  if (typeof tc['add_eos_token'] === 'boolean') s.addEos = tc['add_eos_token'];
  const template = chatTemplate(tc['chat_template']) ?? c.chatTemplateFile;
  if (template !== undefined) s.chatTemplate = template;
  return s;
}

function chatTemplate(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    const named = v as { name?: string; template?: string }[];
    return (named.find((t) => t.name === 'default') ?? named[0])?.template;
  }
  return undefined;
}

/** A tokenizer from a parsed tokenizer.json and its configuration files. */
export function tokenizerFromJson(json: Json, configs: TokenizerConfigs, source: string): HfTokenizer {
  const added = json['added_tokens'];
  if (
    added !== undefined &&
    added !== null &&
    (!Array.isArray(added) || added.some((t) => typeof t !== 'object' || t === null || Array.isArray(t)))
  ) {
    fail(`${source}: added_tokens must be a list of token objects`);
  }
  return new HfTokenizer(source, json, specialIds(json, configs, source));
}

/** The GPT-2 layout: vocab.json (token -> id) and merges.txt ("#version" line, then "left right" lines). */
export function gpt2TokenizerJson(dir: string, configs: TokenizerConfigs): Json {
  const vocab = readJson(join(dir, 'vocab.json'));
  const mergesPath = join(dir, 'merges.txt');
  const merges = readFileSync(mergesPath, 'utf8')
    .split('\n')
    .filter((l, i) => l.length > 0 && !(i === 0 && l.startsWith('#version')));
  for (const m of merges) if (m.indexOf(' ', 1) < 0) fail(`${mergesPath}: line ${JSON.stringify(m)} is not "left right"`);
  const tc = configs.tokenizerConfig ?? {};
  const sm = configs.specialTokensMap ?? {};
  // the slow GPT2Tokenizer splits text at its special tokens and at added_tokens_decoder's tokens
  const added = new Map<number, Json>();
  for (const [id, t] of Object.entries((tc['added_tokens_decoder'] ?? {}) as Record<string, Json>)) {
    added.set(Number(id), {
      id: Number(id),
      content: t['content'],
      single_word: t['single_word'] === true,
      lstrip: t['lstrip'] === true,
      rstrip: t['rstrip'] === true,
      normalized: false,
      special: t['special'] !== false,
    });
  }
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
    const text = tokenText(tc[key] ?? sm[key]);
    const id = text && Object.hasOwn(vocab, text) ? (vocab[text] as number) : undefined;
    if (text && id !== undefined && !added.has(id))
      added.set(id, { id, content: text, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  }
  const prefix = tc['add_prefix_space'] === true;
  return {
    version: '1.0',
    added_tokens: [...added.values()].sort((a, b) => (a['id'] as number) - (b['id'] as number)),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: prefix, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: prefix, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  };
}

/**
 * The tokenizer of a model directory: tokenizer.json, else GPT-2/OPT-style vocab.json + merges.txt, with
 * tokenizer_config.json / generation_config.json / special_tokens_map.json beside it. Other layouts are refused
 * by name.
 */
export function loadTokenizerDir(dir: string): HfTokenizer {
  const path = join(dir, 'tokenizer.json');
  const configs = readTokenizerConfigs(dir);
  if (existsSync(path)) return tokenizerFromJson(readJson(path), configs, path);
  if (existsSync(join(dir, 'vocab.json')) && existsSync(join(dir, 'merges.txt'))) {
    return tokenizerFromJson(gpt2TokenizerJson(dir, configs), configs, join(dir, 'vocab.json'));
  }
  const others: [string, string][] = [
    ['tokenizer.model', 'a SentencePiece model (tokenizer.model) without tokenizer.json'],
    ['tiktoken.model', 'a tiktoken file'],
    ['vocab.txt', 'a WordPiece vocab.txt'],
    ['spiece.model', 'a SentencePiece model (spiece.model) without tokenizer.json'],
  ];
  for (const [f, what] of others) {
    if (existsSync(join(dir, f)))
      fail(`${join(dir, f)}: ${what} is not supported; the directory needs tokenizer.json (or GPT-2-style vocab.json + merges.txt)`);
  }
  return fail(`${path}: not found (the model directory needs a tokenizer.json, or GPT-2-style vocab.json + merges.txt)`);
}
