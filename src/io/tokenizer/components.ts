/**
 * tokenizer.json components as the `tokenizers` library defines them (normalizers, pre-tokenizers,
 * post-processors, decoders), compiled to plain functions. Every type and option that is not implemented is
 * refused by name through `refuse`, never skipped.
 */
import { shown } from '../errors.js';
import { escapeRegExp, onigRegExp, RegexUnsupported } from './regex.js';

type Json = Record<string, unknown>;
export type Refuse = (what: string) => never;

/** Where a piece of text sits: at the very start of the input, and whether the tokenizer's own prefix is wanted. */
export interface Ctx {
  atStart: boolean;
  dummyPrefix: boolean;
}

export type Normalizer = (s: string, ctx: Ctx) => string;
/** receives each piece a pre-tokenizer cuts, and whether it starts the input */
export type Emit = (piece: string, atStart: boolean) => void;
/** cuts one piece (atStart: it starts the input) into pieces, in order */
export type PreTokenizer = (piece: string, atStart: boolean, dummyPrefix: boolean, emit: Emit) => void;

const str = (j: Json, k: string, refuse: Refuse, where: string): string => {
  const v = j[k];
  if (typeof v !== 'string') refuse(`${where}: ${k} ${JSON.stringify(v)} is not a string`);
  return v as string;
};

function pattern(p: unknown, refuse: Refuse, where: string): RegExp {
  const o = (p ?? {}) as Json;
  if (typeof o['String'] === 'string') return new RegExp(escapeRegExp(o['String']), 'gu');
  if (typeof o['Regex'] === 'string') {
    try {
      return onigRegExp(o['Regex']);
    } catch (e) {
      if (e instanceof RegexUnsupported) refuse(`${where}: regex feature not supported: ${e.message}`);
      throw e;
    }
  }
  return refuse(`${where}: pattern ${JSON.stringify(p)} is neither {String} nor {Regex}`);
}

/** s with every match of the pattern replaced by content (literally) */
function replacer(p: unknown, content: string, refuse: Refuse, where: string): (s: string) => string {
  const lit = ((p ?? {}) as Json)['String'];
  if (typeof lit === 'string' && lit.length > 0) {
    const safe = content.replaceAll('$', '$$$$');
    return (s) => s.replaceAll(lit, safe);
  }
  const re = pattern(p, refuse, where);
  return (s) => s.replace(re, () => content);
}

/** Lowercase code point by code point, as Rust's char::to_lowercase (no final-sigma context). */
function lowercase(s: string): string {
  if (!s.includes('\u03a3')) return s.toLowerCase();
  let out = '';
  for (const c of s) out += c === '\u03a3' ? '\u03c3' : c.toLowerCase();
  return out;
}

export function compileNormalizer(j: Json | null | undefined, refuse: Refuse, where = 'normalizer'): Normalizer | undefined {
  if (!j) return undefined;
  const type = j['type'];
  const at = `${where} ${JSON.stringify(type)}`;
  switch (type) {
    case 'Sequence': {
      const parts = ((j['normalizers'] as Json[]) ?? []).map((n, i) => compileNormalizer(n, refuse, `${where}.normalizers[${i}]`)!);
      if (parts.length === 0) return undefined;
      return (s, ctx) => {
        for (const p of parts) s = p(s, ctx);
        return s;
      };
    }
    case 'NFC':
    case 'NFD':
    case 'NFKC':
    case 'NFKD':
      return (s) => s.normalize(type);
    case 'Lowercase':
      return lowercase;
    case 'Prepend': {
      const p = str(j, 'prepend', refuse, at);
      return (s, ctx) => (s.length === 0 || (ctx.atStart && !ctx.dummyPrefix) ? s : p + s);
    }
    case 'Replace':
      return replacer(j['pattern'], str(j, 'content', refuse, at), refuse, at);
    case 'Strip': {
      const left = j['strip_left'] !== false;
      const right = j['strip_right'] !== false;
      return (s) => {
        if (left) s = s.replace(/^\s+/u, '');
        if (right) s = s.replace(/\s+$/u, '');
        return s;
      };
    }
    case 'StripAccents':
      return (s) => s.replace(/\p{M}/gu, '');
    default:
      return refuse(
        `${where} type ${shown(type)} is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, StripAccents)`,
      );
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Splitting with the library's five behaviours

export type Behavior = 'Removed' | 'Isolated' | 'MergedWithPrevious' | 'MergedWithNext' | 'Contiguous';
const BEHAVIORS: Behavior[] = ['Removed', 'Isolated', 'MergedWithPrevious', 'MergedWithNext', 'Contiguous'];

/** Split s by the matches of re (global) with one of the library's behaviours; non-empty pieces go to emit. */
export function splitInto(s: string, re: RegExp, behavior: Behavior, invert: boolean, atStart: boolean, emit: Emit): void {
  re.lastIndex = 0;
  if (!invert && (behavior === 'Isolated' || behavior === 'Removed')) {
    // the common cases, streamed: gaps and matches in order
    let prev = 0;
    for (let m = re.exec(s); m !== null; m = re.exec(s)) {
      const start = m.index;
      const end = start + m[0].length;
      if (end === start) {
        re.lastIndex = start + (s.codePointAt(start)! > 0xffff ? 2 : 1);
        continue;
      }
      if (start > prev) emit(s.slice(prev, start), atStart && prev === 0);
      if (behavior === 'Isolated') emit(start === 0 && end === s.length ? s : s.slice(start, end), atStart && start === 0);
      prev = end;
    }
    if (prev < s.length) emit(prev === 0 ? s : s.slice(prev), atStart && prev === 0);
    return;
  }
  // [start, end, isMatch] covering s
  const spans: number[] = [];
  let prev = 0;
  for (let m = re.exec(s); m !== null; m = re.exec(s)) {
    const start = m.index;
    const end = start + m[0].length;
    if (end === start) {
      re.lastIndex = start + (s.codePointAt(start)! > 0xffff ? 2 : 1);
      continue;
    }
    if (start > prev) spans.push(prev, start, invert ? 1 : 0);
    spans.push(start, end, invert ? 0 : 1);
    prev = end;
  }
  if (prev < s.length) spans.push(prev, s.length, invert ? 1 : 0);
  // merge spans per behaviour into [start, end] pairs
  const res: number[] = [];
  let prevMatch = false;
  if (behavior === 'MergedWithNext') {
    for (let k = spans.length - 3; k >= 0; k -= 3) {
      const isMatch = spans[k + 2] === 1;
      if (isMatch && !prevMatch && res.length) res[res.length - 2] = spans[k]!;
      else res.push(spans[k]!, spans[k + 1]!);
      prevMatch = isMatch;
    }
    // res holds [start, end] pairs in reverse order
    const pairs: number[] = [];
    for (let k = res.length - 2; k >= 0; k -= 2) pairs.push(res[k]!, res[k + 1]!);
    res.length = 0;
    res.push(...pairs);
  } else {
    for (let k = 0; k < spans.length; k += 3) {
      const isMatch = spans[k + 2] === 1;
      const [a, b] = [spans[k]!, spans[k + 1]!];
      switch (behavior) {
        case 'Removed':
          if (!isMatch) res.push(a, b);
          break;
        case 'Isolated':
          res.push(a, b);
          break;
        case 'MergedWithPrevious':
          if (isMatch && !prevMatch && res.length) res[res.length - 1] = b;
          else res.push(a, b);
          break;
        case 'Contiguous':
          if (isMatch === prevMatch && res.length) res[res.length - 1] = b;
          else res.push(a, b);
          break;
      }
      prevMatch = isMatch;
    }
  }
  for (let k = 0; k < res.length; k += 2) {
    if (res[k + 1]! > res[k]!) emit(s.slice(res[k], res[k + 1]), atStart && res[k] === 0);
  }
}

function splitter(re: RegExp, behavior: Behavior, invert: boolean): PreTokenizer {
  return (piece, atStart, _dummyPrefix, emit) => splitInto(piece, re, behavior, invert, atStart, emit);
}

// GPT-2's pattern, as the ByteLevel pre-tokenizer uses it
export const GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/** bytes_to_unicode: each byte as a printable character */
export const BYTE_TO_CHAR: string[] = (() => {
  const t: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    t[b] = String.fromCharCode(printable ? b : 256 + n++);
  }
  return t;
})();
export const CHAR_TO_BYTE = new Map<string, number>(BYTE_TO_CHAR.map((c, b) => [c, b]));

export function byteLevelMap(s: string): string {
  let ascii = true;
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) >= 0x80) {
      ascii = false;
      break;
    }
  }
  let out = '';
  if (ascii) {
    for (let i = 0; i < s.length; i++) out += BYTE_TO_CHAR[s.charCodeAt(i)]!;
    return out;
  }
  for (const b of Buffer.from(s, 'utf8')) out += BYTE_TO_CHAR[b]!;
  return out;
}

export interface CompiledPreTokenizer {
  run: PreTokenizer;
  /** the chain ends with ByteLevel's byte-to-character mapping, left for the caller to apply (and cache) */
  byteLevelLast: boolean;
}

const PUNCT = /[\p{P}!-/:-@[-`{-~]/u;
const NUMERIC = /\p{N}/u;
const WHITESPACE = /[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;

export function compilePreTokenizer(
  j: Json | null | undefined,
  refuse: Refuse,
  where = 'pre_tokenizer',
  last = true,
): CompiledPreTokenizer | undefined {
  if (!j) return undefined;
  const type = j['type'];
  const at = `${where} ${JSON.stringify(type)}`;
  const behavior = (v: unknown, dflt: Behavior): Behavior => {
    const b = (v ?? dflt) as Behavior;
    if (!BEHAVIORS.includes(b)) refuse(`${at}: behavior ${JSON.stringify(v)} is not supported`);
    return b;
  };
  switch (type) {
    case 'Sequence': {
      const list = (j['pretokenizers'] as Json[]) ?? [];
      const steps = list.map((p, i) => compilePreTokenizer(p, refuse, `${where}.pretokenizers[${i}]`, last && i === list.length - 1)!);
      if (steps.length === 0) return undefined;
      const n = steps.length;
      return {
        run: (piece, atStart, dummyPrefix, emit) => {
          // the chain of emitters, built once per call (a call is one piece of text between added tokens)
          let e = emit;
          for (let k = n - 1; k > 0; k--) {
            const step = steps[k]!.run;
            const next = e;
            e = (w, a) => step(w, a, dummyPrefix, next);
          }
          steps[0]!.run(piece, atStart, dummyPrefix, e);
        },
        byteLevelLast: steps[n - 1]!.byteLevelLast,
      };
    }
    case 'Split': {
      const re = pattern(j['pattern'], refuse, at);
      return { run: splitter(re, behavior(j['behavior'], 'Isolated'), j['invert'] === true), byteLevelLast: false };
    }
    case 'ByteLevel': {
      const prefix = j['add_prefix_space'] === true;
      const re = j['use_regex'] !== false ? onigRegExp(GPT2_REGEX) : undefined;
      const split = re ? splitter(re, 'Isolated', false) : undefined;
      return {
        run: (piece, atStart, dummyPrefix, emit) => {
          if (prefix && !piece.startsWith(' ') && !(atStart && !dummyPrefix)) piece = ' ' + piece;
          const out: Emit = last ? emit : (w, a) => emit(byteLevelMap(w), a);
          if (split) split(piece, atStart, dummyPrefix, out);
          else out(piece, atStart);
        },
        byteLevelLast: last,
      };
    }
    case 'Metaspace': {
      const rep = str(j, 'replacement', refuse, at);
      let scheme = j['prepend_scheme'] as string | undefined;
      if (scheme === undefined) scheme = j['add_prefix_space'] === false ? 'never' : 'always';
      if (!['always', 'first', 'never'].includes(scheme)) refuse(`${at}: prepend_scheme ${JSON.stringify(scheme)} is not supported`);
      const doSplit = j['split'] !== false;
      const re = new RegExp(escapeRegExp(rep), 'gu');
      const split = doSplit ? splitter(re, 'MergedWithNext', false) : undefined;
      return {
        run: (piece, atStart, dummyPrefix, emit) => {
          piece = piece.replaceAll(' ', rep);
          const want = scheme === 'always' || (scheme === 'first' && atStart);
          if (want && !(atStart && !dummyPrefix) && !piece.startsWith(rep)) piece = rep + piece;
          if (split) split(piece, atStart, dummyPrefix, emit);
          else emit(piece, atStart);
        },
        byteLevelLast: false,
      };
    }
    case 'Digits': {
      const individual = j['individual_digits'] === true;
      return { run: splitter(new RegExp(NUMERIC.source, 'gu'), individual ? 'Isolated' : 'Contiguous', false), byteLevelLast: false };
    }
    case 'Punctuation':
      return { run: splitter(new RegExp(PUNCT.source, 'gu'), behavior(j['behavior'], 'Isolated'), false), byteLevelLast: false };
    case 'Whitespace':
      return {
        run: splitter(
          /[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\u200c\u200d]+|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\u200c\u200d\s]+/gu,
          'Removed',
          true,
        ),
        byteLevelLast: false,
      };
    case 'WhitespaceSplit':
      return { run: splitter(new RegExp(WHITESPACE.source, 'gu'), 'Removed', false), byteLevelLast: false };
    default:
      return refuse(
        `${where} type ${shown(type)} is not supported (supported: Sequence, Split, ByteLevel, Metaspace, Digits, Punctuation, Whitespace, WhitespaceSplit)`,
      );
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Post-processors: the special tokens around a single sequence

export interface Wrap {
  prefix: number[];
  suffix: number[];
}

export function compilePostProcessor(j: Json | null | undefined, refuse: Refuse, where = 'post_processor'): Wrap {
  if (!j) return { prefix: [], suffix: [] };
  const type = j['type'];
  const at = `${where} ${JSON.stringify(type)}`;
  switch (type) {
    case 'Sequence': {
      const w: Wrap = { prefix: [], suffix: [] };
      ((j['processors'] as Json[]) ?? []).forEach((p, i) => {
        const inner = compilePostProcessor(p, refuse, `${where}.processors[${i}]`);
        w.prefix = [...inner.prefix, ...w.prefix];
        w.suffix = [...w.suffix, ...inner.suffix];
      });
      return w;
    }
    case 'ByteLevel':
      return { prefix: [], suffix: [] };
    case 'TemplateProcessing': {
      const specials = (j['special_tokens'] ?? {}) as Record<string, { ids?: number[] }>;
      const w: Wrap = { prefix: [], suffix: [] };
      let seenA = false;
      for (const item of (j['single'] as Json[]) ?? []) {
        if (item['Sequence']) {
          const id = (item['Sequence'] as Json)['id'];
          if (id !== 'A' || seenA) refuse(`${at}: single template has sequence ${JSON.stringify(id)}`);
          seenA = true;
        } else if (item['SpecialToken']) {
          const id = (item['SpecialToken'] as Json)['id'] as string;
          const ids = specials[id]?.ids;
          if (!Array.isArray(ids)) refuse(`${at}: special token ${JSON.stringify(id)} has no ids in special_tokens`);
          (seenA ? w.suffix : w.prefix).push(...ids!);
        } else refuse(`${at}: template item ${JSON.stringify(item)} is not supported`);
      }
      if (!seenA) refuse(`${at}: single template has no $A`);
      return w;
    }
    case 'RobertaProcessing':
    case 'BertProcessing': {
      const id = (k: string): number => {
        const v = j[k];
        if (!Array.isArray(v) || typeof v[1] !== 'number') refuse(`${at}: ${k} ${JSON.stringify(v)} is not [token, id]`);
        return (v as [string, number])[1];
      };
      return { prefix: [id('cls')], suffix: [id('sep')] };
    }
    default:
      return refuse(
        `${where} type ${shown(type)} is not supported (supported: Sequence, ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing)`,
      );
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Decoders: token strings to text

export type Decoder = (tokens: string[]) => string[];

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

export function byteLevelDecode(tokens: string[]): string {
  const bytes: number[] = [];
  for (const t of tokens) {
    const start = bytes.length;
    let ok = true;
    for (const c of t) {
      const b = CHAR_TO_BYTE.get(c);
      if (b === undefined) {
        ok = false;
        break;
      }
      bytes.push(b);
    }
    if (!ok) {
      bytes.length = start;
      for (const b of Buffer.from(t, 'utf8')) bytes.push(b);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

export function compileDecoder(j: Json | null | undefined, refuse: Refuse, where = 'decoder'): Decoder | undefined {
  if (!j) return undefined;
  const type = j['type'];
  const at = `${where} ${JSON.stringify(type)}`;
  switch (type) {
    case 'Sequence': {
      const parts = ((j['decoders'] as Json[]) ?? []).map((d, i) => compileDecoder(d, refuse, `${where}.decoders[${i}]`)!);
      return (tokens) => {
        for (const p of parts) tokens = p(tokens);
        return tokens;
      };
    }
    case 'ByteLevel':
      return (tokens) => [byteLevelDecode(tokens)];
    case 'Metaspace': {
      const rep = str(j, 'replacement', refuse, at);
      let scheme = j['prepend_scheme'] as string | undefined;
      if (scheme === undefined) scheme = j['add_prefix_space'] === false ? 'never' : 'always';
      if (!['always', 'first', 'never'].includes(scheme)) refuse(`${at}: prepend_scheme ${JSON.stringify(scheme)} is not supported`);
      return (tokens) =>
        tokens.map((t, i) => {
          let s = '';
          for (const c of t) s += c === rep ? (i === 0 && scheme !== 'never' ? '' : ' ') : c;
          return s;
        });
    }
    case 'ByteFallback':
      return (tokens) => {
        const out: string[] = [];
        let bytes: number[] = [];
        const flush = (): void => {
          if (!bytes.length) return;
          try {
            out.push(utf8Strict.decode(Uint8Array.from(bytes)));
          } catch {
            for (let k = 0; k < bytes.length; k++) out.push('\uFFFD');
          }
          bytes = [];
        };
        for (const t of tokens) {
          const m = t.length === 6 ? BYTE_TOKEN.exec(t) : null;
          if (m) bytes.push(parseInt(m[1]!, 16));
          else {
            flush();
            out.push(t);
          }
        }
        flush();
        return out;
      };
    case 'Fuse':
      return (tokens) => [tokens.join('')];
    case 'Strip': {
      const content = str(j, 'content', refuse, at);
      const start = Number(j['start'] ?? 0);
      const stop = Number(j['stop'] ?? 0);
      return (tokens) =>
        tokens.map((t) => {
          const cs = Array.from(t);
          let a = 0;
          let b = cs.length;
          while (a < start && a < b && cs[a] === content) a++;
          let k = 0;
          while (k < stop && b > a && cs[b - 1] === content) {
            b--;
            k++;
          }
          return cs.slice(a, b).join('');
        });
    }
    case 'Replace': {
      const replace = replacer(j['pattern'], str(j, 'content', refuse, at), refuse, at);
      return (tokens) => tokens.map(replace);
    }
    default:
      return refuse(
        `${where} type ${shown(type)} is not supported (supported: Sequence, ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace)`,
      );
  }
}
