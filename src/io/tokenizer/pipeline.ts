/**
 * A tokenizer.json, run as the `tokenizers` library runs it: added tokens are cut out of the text (those with
 * normalized: false from the raw text, the others after normalization), each remaining piece is normalized,
 * pre-tokenized and encoded by the model, and the post-processor adds its special tokens. Decoding maps ids to
 * tokens and runs the decoder chain.
 */
import { fail, shown } from '../errors.js';
import { AddedTokenMatcher, type AddedToken } from './added.js';
import { Bpe } from './bpe.js';
import {
  byteLevelMap,
  compileDecoder,
  compileNormalizer,
  compilePostProcessor,
  compilePreTokenizer,
  type CompiledPreTokenizer,
  type Ctx,
  type Decoder,
  type Normalizer,
  type Refuse,
  type Wrap,
} from './components.js';

type Json = Record<string, unknown>;

export interface EncodeOptions {
  /**
   * Add the tokenizer's special tokens (its post-processor: BOS for Llama/Gemma, nothing for Qwen).
   * Default true.
   */
  specialTokens?: boolean;
  /** Override whether BOS starts the ids (default: what the tokenizer does). */
  bos?: boolean;
  /**
   * false drops the tokenizer's own prefix at the start of the text (SentencePiece's dummy "▁", Metaspace's
   * prepended "▁", ByteLevel's add_prefix_space), so the first word is tokenized as if it continued a previous
   * one. Default true.
   */
  dummyPrefix?: boolean;
}

export interface DecodeOptions {
  /** Leave out special added tokens (BOS, EOS, chat markers). Default true. */
  skipSpecialTokens?: boolean;
}

/** Special token ids, from tokenizer_config.json / generation_config.json / the post-processor. */
export interface SpecialIds {
  bos?: number;
  eos: number[];
  pad?: number;
  /** tokenizer_config.json's add_bos_token / add_eos_token when given, overriding the post-processor */
  addBos?: boolean;
  addEos?: boolean;
  chatTemplate?: string;
}

export type TokenizerKind = 'sentencepiece-bpe' | 'byte-level-bpe' | 'bpe';

export class HfTokenizer {
  /** token string of each id (vocabulary and added tokens) */
  readonly pieces: string[];
  readonly kind: TokenizerKind;
  readonly bosId: number | undefined;
  readonly eosIds: readonly number[];
  readonly padId: number | undefined;
  readonly unkId: number | undefined;
  /** whether encode() puts BOS first (the tokenizer's own setting) */
  readonly addsBos: boolean;
  readonly chatTemplate: string | undefined;
  /** ids of SentencePiece byte-fallback pieces <0xXX> */
  readonly byteFallbackIds: ReadonlySet<number>;
  /** ids of the added tokens (special or not) */
  readonly addedIds: ReadonlySet<number>;
  /** tokenizer.json's pre_tokenizer and normalizer as written, for writers that name them (GGUF) */
  readonly preTokenizerSpec: unknown;
  readonly normalizerSpec: unknown;
  /** BPE's ignore_merges: a word that is a vocabulary token is that token */
  readonly ignoresMerges: boolean;

  private readonly vocab = new Map<string, number>();
  private readonly bpe: Bpe;
  private readonly merges: { left: string; right: string; rank: number }[];
  private readonly normalizer: Normalizer | undefined;
  private readonly preTokenizer: CompiledPreTokenizer | undefined;
  private readonly byteLevelLast: boolean;
  /** the normalizer is Llama 2's [Prepend("▁"),] Replace(" ", "▁") alone, with nothing that needs the whole normalized text */
  private readonly spaceToMeta: 'prepend' | 'replace' | undefined;
  private readonly decoder: Decoder | undefined;
  private readonly wrap: Wrap;
  private readonly rawAdded: AddedTokenMatcher;
  private readonly normAdded: AddedTokenMatcher;
  private readonly specialIds = new Set<number>();
  private readonly json: Json | undefined;
  private readonly wordCache = new Map<string, number | number[]>();

  constructor(
    /** the file it came from, for messages */
    readonly source: string,
    json: Json,
    special: SpecialIds,
    /** merges with explicit ranks (ties allowed), instead of the file's list order */
    rankedMerges?: { left: string; right: string; rank: number }[],
    /** keep the parsed tokenizer.json for toTokenizerJson() (it can be large; only converters need it) */
    keepJson = false,
  ) {
    this.json = keepJson ? json : undefined;
    const refuse: Refuse = (what) => fail(`${source}: ${what}`);
    for (const k of Object.keys(json)) {
      if (
        !['version', 'truncation', 'padding', 'added_tokens', 'normalizer', 'pre_tokenizer', 'model', 'post_processor', 'decoder'].includes(
          k,
        )
      ) {
        refuse(`unknown top-level field ${JSON.stringify(k)}`);
      }
    }
    // truncation/padding are per-call batching settings; transformers resets them on every call, and so do we
    const model = (json['model'] ?? {}) as Json;
    const mtype = model['type'] ?? (model['merges'] ? 'BPE' : undefined);
    if (mtype !== 'BPE') refuse(`model type ${shown(mtype)} is not supported (supported: BPE)`);
    if (model['dropout'] !== null && model['dropout'] !== undefined && model['dropout'] !== 0) {
      refuse(`model BPE dropout ${JSON.stringify(model['dropout'])} is not supported`);
    }
    for (const k of ['continuing_subword_prefix', 'end_of_word_suffix']) {
      if (model[k] !== null && model[k] !== undefined && model[k] !== '')
        refuse(`model BPE ${k} ${JSON.stringify(model[k])} is not supported`);
    }
    const vocabJson = model['vocab'];
    if (!vocabJson || typeof vocabJson !== 'object' || Array.isArray(vocabJson)) refuse('model BPE has no vocab object');
    const rawMerges = model['merges'];
    if (!Array.isArray(rawMerges)) refuse('model BPE has no merges list');

    const pieces: string[] = [];
    for (const [p, id] of Object.entries(vocabJson as Record<string, unknown>)) {
      // ids index the embedding: each a distinct non-negative integer
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0)
        refuse(`vocab token ${JSON.stringify(p)} has id ${JSON.stringify(id)}, not a non-negative integer`);
      if (pieces[id] !== undefined) refuse(`vocab tokens ${JSON.stringify(pieces[id])} and ${JSON.stringify(p)} share id ${id}`);
      this.vocab.set(p, id);
      pieces[id] = p;
    }
    if (this.vocab.size === 0) refuse('model BPE has an empty vocab');
    const added: AddedToken[] = ((json['added_tokens'] as Json[]) ?? []).map((t) => ({
      id: t['id'] as number,
      content: t['content'] as string,
      special: t['special'] === true,
      normalized: t['normalized'] === true,
      lstrip: t['lstrip'] === true,
      rstrip: t['rstrip'] === true,
      singleWord: t['single_word'] === true,
    }));
    const addedIds = new Map<string, number>();
    for (const t of added) {
      if (typeof t.id !== 'number' || !Number.isInteger(t.id) || t.id < 0 || typeof t.content !== 'string') {
        refuse(`added token ${JSON.stringify(t)} has no id or content`);
      }
      const inVocab = this.vocab.get(t.content);
      if (inVocab !== undefined && inVocab !== t.id)
        refuse(`added token ${JSON.stringify(t.content)} has id ${t.id} but the vocab gives it ${inVocab}`);
      pieces[t.id] = t.content;
      addedIds.set(t.content, t.id);
      if (t.special) this.specialIds.add(t.id);
    }
    for (let i = 0; i < pieces.length; i++) if (pieces[i] === undefined) pieces[i] = '';
    this.pieces = pieces;

    this.merges =
      rankedMerges ??
      (rawMerges as unknown[]).map((m, rank) => {
        let pair: [string, string];
        if (typeof m === 'string') {
          const i = m.indexOf(' ', 1);
          if (i < 0) refuse(`merge ${JSON.stringify(m)} is not "left right"`);
          pair = [m.slice(0, i), m.slice(i + 1)];
        } else if (Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string') {
          pair = [m[0], m[1]];
        } else return refuse(`merge ${JSON.stringify(m)} is neither "left right" nor [left, right]`);
        // as the tokenizers library's BPE builder requires: both parts and their merge are vocabulary tokens
        for (const t of [pair[0], pair[1], pair[0] + pair[1]]) {
          if (!this.vocab.has(t)) refuse(`merge ${JSON.stringify(m)} names ${JSON.stringify(t)}, which is not in the vocab`);
        }
        return { left: pair[0], right: pair[1], rank };
      });
    const unkToken = model['unk_token'];
    let unk: number | undefined;
    if (typeof unkToken === 'string') {
      unk = this.vocab.get(unkToken) ?? addedIds.get(unkToken);
      if (unk === undefined) refuse(`model BPE unk_token ${JSON.stringify(unkToken)} is not in the vocabulary`);
    }
    this.unkId = unk;
    this.bpe = new Bpe({
      vocab: this.vocab,
      merges: this.merges,
      ...(unk !== undefined ? { unk } : {}),
      byteFallback: model['byte_fallback'] === true,
      fuseUnk: model['fuse_unk'] === true,
      ignoreMerges: model['ignore_merges'] === true,
    });

    this.addedIds = new Set(added.map((t) => t.id));
    this.ignoresMerges = model['ignore_merges'] === true;
    this.preTokenizerSpec = json['pre_tokenizer'] ?? null;
    this.normalizerSpec = json['normalizer'] ?? null;
    this.normalizer = compileNormalizer(json['normalizer'] as Json, refuse);
    this.preTokenizer = compilePreTokenizer(json['pre_tokenizer'] as Json, refuse);
    this.spaceToMeta =
      !json['pre_tokenizer'] && this.bpe.chunkable && !added.some((t) => t.normalized) ? spaceToMeta(json['normalizer']) : undefined;
    this.byteLevelLast = this.preTokenizer?.byteLevelLast ?? false;
    this.decoder = compileDecoder(json['decoder'] as Json, refuse);
    const wrap = compilePostProcessor(json['post_processor'] as Json, refuse);
    this.rawAdded = new AddedTokenMatcher(added.filter((t) => !t.normalized));
    this.normAdded = new AddedTokenMatcher(added.filter((t) => t.normalized));

    const byteIds = new Set<number>();
    if (model['byte_fallback'] === true) for (const [p, id] of this.vocab) if (/^<0x[0-9A-F]{2}>$/.test(p)) byteIds.add(id);
    this.byteFallbackIds = byteIds;
    const byteLevel = JSON.stringify(json['pre_tokenizer'] ?? null).includes('"ByteLevel"');
    this.kind = byteLevel ? 'byte-level-bpe' : model['byte_fallback'] === true ? 'sentencepiece-bpe' : 'bpe';

    // special tokens: BOS/EOS/PAD as configured; tokenizer_config's add_bos_token/add_eos_token override the template
    this.bosId = special.bos;
    this.eosIds = special.eos;
    this.padId = special.pad;
    this.chatTemplate = special.chatTemplate;
    const bos = special.bos;
    if (special.addBos !== undefined && bos !== undefined) {
      const has = wrap.prefix[0] === bos;
      if (special.addBos && !has) wrap.prefix.unshift(bos);
      if (!special.addBos && has) wrap.prefix.shift();
    }
    const eos = special.eos[0];
    if (special.addEos !== undefined && eos !== undefined) {
      const has = wrap.suffix[wrap.suffix.length - 1] === eos;
      if (special.addEos && !has) wrap.suffix.push(eos);
      if (!special.addEos && has) wrap.suffix.pop();
    }
    this.wrap = wrap;
    this.addsBos = bos !== undefined && wrap.prefix[0] === bos;
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  /** The BOS id, or −1 when the tokenizer has none (for writers that need a number). */
  get bos(): number {
    return this.bosId ?? -1;
  }

  /** The first EOS id, or −1. */
  get eos(): number {
    return this.eosIds[0] ?? -1;
  }

  /** The unknown token's id, or −1. */
  get unk(): number {
    return this.unkId ?? -1;
  }

  /** The merges with their ranks (ties possible where they came from SentencePiece scores), for vocabulary writers. */
  get mergeList(): readonly { left: string; right: string; rank: number }[] {
    return this.merges;
  }

  /** The tokenizer.json this tokenizer runs (kept only by tokenizers built to be written out, e.g. from llama2.c). */
  toTokenizerJson(): object {
    if (!this.json) fail(`${this.source}: this tokenizer was not built to be written out`);
    return this.json;
  }

  idToToken(id: number): string | undefined {
    return this.pieces[id];
  }

  tokenToId(token: string): number | undefined {
    return this.vocab.get(token) ?? this.addedId(token);
  }

  private addedId(token: string): number | undefined {
    const i = this.pieces.indexOf(token);
    return i >= 0 ? i : undefined;
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const out: number[] = [];
    const special = opts.specialTokens ?? true;
    let prefix = special ? this.wrap.prefix : [];
    if (opts.bos === true && this.bosId === undefined) fail(`${this.source}: this tokenizer has no BOS token`);
    if (opts.bos === true && prefix[0] !== this.bosId) {
      prefix = [this.bosId!, ...prefix];
    } else if (opts.bos === false && this.bosId !== undefined && prefix[0] === this.bosId) prefix = prefix.slice(1);
    for (const id of prefix) out.push(id);
    const dummyPrefix = opts.dummyPrefix ?? true;
    for (const seg of this.rawAdded.split(text)) {
      if (seg.id >= 0) {
        out.push(seg.id);
        continue;
      }
      const ctx: Ctx = { atStart: seg.start === 0, dummyPrefix };
      if (this.spaceToMeta) {
        this.encodeSentencePiece(seg.text, this.spaceToMeta === 'prepend' && seg.text.length > 0 && !(ctx.atStart && !dummyPrefix), out);
        continue;
      }
      const norm = this.normalizer ? this.normalizer(seg.text, ctx) : seg.text;
      for (const part of this.normAdded.split(norm)) {
        if (part.id >= 0) out.push(part.id);
        else this.encodePiece(part.text, { atStart: ctx.atStart && part.start === 0, dummyPrefix }, out);
      }
    }
    if (special) for (const id of this.wrap.suffix) out.push(id);
    return out;
  }

  /**
   * Llama 2's layout without building the normalized text: "▁" (if prefix) + text with spaces as "▁", cut before
   * each "▁" that follows another character, which no piece spans (Bpe.chunkable); here, before each space that
   * follows a character other than a space or a literal "▁". Each part is normalized and cached on its own.
   */
  private encodeSentencePiece(text: string, prefix: boolean, out: number[]): void {
    this.out = out;
    let start = 0;
    for (let i = text.indexOf(' ', 1); i > 0; i = text.indexOf(' ', i + 1)) {
      const c = text.charCodeAt(i - 1);
      if (c === 0x20 || c === 0x2581) continue;
      this.emitSpaced(text.slice(start, i), start === 0 && prefix);
      start = i;
    }
    this.emitSpaced(start === 0 ? text : text.slice(start), start === 0 && prefix);
  }

  private emitSpaced(raw: string, prefix: boolean): void {
    if (prefix) {
      this.bpe.encodeWord('\u2581' + raw.replaceAll(' ', '\u2581'), this.out);
      return;
    }
    const out = this.out;
    let ids = this.wordCache.get(raw);
    if (ids === undefined) {
      const fresh: number[] = [];
      this.bpe.encodeWordUncached(raw.replaceAll(' ', '\u2581'), fresh);
      ids = fresh.length === 1 ? fresh[0]! : fresh;
      if (raw.length <= 256) {
        if (this.wordCache.size > 200_000) this.wordCache.clear();
        this.wordCache.set(raw, ids);
      }
    }
    if (typeof ids === 'number') out.push(ids);
    else for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
  }

  private encodePiece(text: string, ctx: Ctx, out: number[]): void {
    if (!this.preTokenizer) {
      if (text.length) this.bpe.encodeWord(text, out);
      return;
    }
    this.out = out;
    this.preTokenizer.run(text, ctx.atStart, ctx.dummyPrefix, this.emitWord);
  }

  /** where emitWord appends */
  private out: number[] = [];

  /** a pre-tokenized word's ids, appended to this.out (cached by the word before any byte-level mapping) */
  private readonly emitWord = (w: string): void => {
    const out = this.out;
    let ids = this.wordCache.get(w);
    if (ids === undefined) {
      const fresh: number[] = [];
      this.bpe.encodeWordUncached(this.byteLevelLast ? byteLevelMap(w) : w, fresh);
      ids = fresh.length === 1 ? fresh[0]! : fresh;
      if (w.length <= 256) {
        if (this.wordCache.size > 200_000) this.wordCache.clear();
        this.wordCache.set(w, ids);
      }
    }
    if (typeof ids === 'number') out.push(ids);
    else for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
  };

  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    const skip = opts.skipSpecialTokens ?? true;
    const tokens: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      const t = this.pieces[id];
      if (t === undefined || (skip && this.specialIds.has(id))) continue;
      tokens.push(t);
    }
    if (!this.decoder) return tokens.join(' ');
    return this.decoder(tokens).join('');
  }
}

/** 'prepend' for [Prepend("▁"), Replace(" " -> "▁")], 'replace' for Replace(" " -> "▁") alone, else undefined. */
function spaceToMeta(n: unknown): 'prepend' | 'replace' | undefined {
  const j = n as Json | null;
  if (!j) return undefined;
  const list = j['type'] === 'Sequence' ? ((j['normalizers'] as Json[]) ?? []) : [j];
  const isReplace = (x: Json | undefined): boolean =>
    x?.['type'] === 'Replace' && (x['pattern'] as Json | undefined)?.['String'] === ' ' && x['content'] === '\u2581';
  if (list.length === 1 && isReplace(list[0])) return 'replace';
  if (list.length === 2 && list[0]!['type'] === 'Prepend' && list[0]!['prepend'] === '\u2581' && isReplace(list[1])) return 'prepend';
  return undefined;
}
