import { existsSync, readFileSync } from 'node:fs';
import { fail } from './errors.js';

/**
 * Llama SentencePiece BPE with byte fallback.
 *
 * Encoding follows SentencePiece's BPE: the text (with a dummy-prefix "▁" and spaces as "▁") starts as one
 * symbol per code point; the adjacent pair with the best merge rank is merged repeatedly (leftmost on ties);
 * symbols that are not pieces become their UTF-8 bytes <0xXX>. The same engine serves HF tokenizer.json
 * (rank = position in `merges`) and llama2.c tokenizer.bin (rank from the merged piece's score).
 */

const SPACE = '\u2581';

export interface TokenizerSpec {
  pieces: string[];
  /** merges in priority order; pairs sharing a rank (same merged piece) tie-break leftmost */
  merges: { left: string; right: string; rank: number }[];
  bos: number;
  eos: number;
  unk: number;
}

export class LlamaTokenizer {
  readonly pieces: string[];
  readonly bos: number;
  readonly eos: number;
  readonly unk: number;
  private pieceToId = new Map<string, number>();
  /** key left*V+right -> rank*V + resultId */
  private mergeTable = new Map<number, number>();
  private byteIds = new Int32Array(256).fill(-1);
  private idToByte: Int16Array;
  private chunkable: boolean;
  private cache = new Map<string, number[]>();

  constructor(readonly spec: TokenizerSpec) {
    this.pieces = spec.pieces;
    this.bos = spec.bos;
    this.eos = spec.eos;
    this.unk = spec.unk;
    const V = this.pieces.length;
    this.idToByte = new Int16Array(V).fill(-1);
    this.pieces.forEach((p, id) => {
      if (!this.pieceToId.has(p)) this.pieceToId.set(p, id);
      const m = /^<0x([0-9A-F]{2})>$/.exec(p);
      if (m) {
        const b = parseInt(m[1]!, 16);
        this.byteIds[b] = id;
        this.idToByte[id] = b;
      }
    });
    for (const { left, right, rank } of spec.merges) {
      const l = this.pieceToId.get(left);
      const r = this.pieceToId.get(right);
      const res = this.pieceToId.get(left + right);
      if (l === undefined || r === undefined || res === undefined) continue;
      const key = l * V + r;
      if (!this.mergeTable.has(key)) this.mergeTable.set(key, rank * V + res);
    }
    // Splitting the text before each word-initial "▁" is exact only if no piece spans such a boundary,
    // i.e. no piece has a non-"▁" character followed by "▁". Llama's vocabulary satisfies this; check anyway.
    this.chunkable = !this.pieces.some((p) => /[^\u2581]\u2581/u.test(p));
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  /**
   * Token ids of text. dummyPrefix: false skips SentencePiece's leading "▁", so the first word is tokenized
   * as if it continued a previous one (how the protocol's reference perplexities were tokenized).
   */
  encode(text: string, opts: { bos?: boolean; dummyPrefix?: boolean } = {}): number[] {
    const out: number[] = [];
    if (opts.bos ?? true) out.push(this.bos);
    if (text.length === 0) return out;
    const norm = ((opts.dummyPrefix ?? true) ? SPACE : '') + text.replaceAll(' ', SPACE);
    if (!this.chunkable) {
      this.encodeChunk(norm, out);
      return out;
    }
    let start = 0;
    for (let i = 1; i <= norm.length; i++) {
      if (i === norm.length || (norm.charCodeAt(i) === 0x2581 && norm.charCodeAt(i - 1) !== 0x2581)) {
        const chunk = norm.slice(start, i);
        let ids = this.cache.get(chunk);
        if (!ids) {
          ids = [];
          this.encodeChunk(chunk, ids);
          if (this.cache.size > 200_000) this.cache.clear();
          this.cache.set(chunk, ids);
        }
        for (const id of ids) out.push(id);
        start = i;
      }
    }
    return out;
  }

  private encodeChunk(text: string, out: number[]): void {
    const V = this.pieces.length;
    const chars = Array.from(text);
    const n = chars.length;
    // id -1 marks a code point that is no piece: it never merges and becomes bytes at the end
    const ids = new Int32Array(n);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      ids[i] = this.pieceToId.get(chars[i]!) ?? -1;
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const heap = new PairHeap();
    const pushPair = (l: number, r: number): void => {
      if (l < 0 || r < 0 || ids[l]! < 0 || ids[r]! < 0) return;
      const m = this.mergeTable.get(ids[l]! * V + ids[r]!);
      if (m === undefined) return;
      heap.push(Math.floor(m / V), l, r, ids[l]!, ids[r]!, m % V);
    };
    for (let i = 0; i + 1 < n; i++) pushPair(i, i + 1);
    while (heap.size > 0) {
      const e = heap.pop();
      // stale entries: a side was merged away or changed since this pair was queued
      if (ids[e.left] !== e.leftId || ids[e.right] !== e.rightId || next[e.left] !== e.right) continue;
      ids[e.left] = e.result;
      ids[e.right] = -2;
      const after = next[e.right]!;
      next[e.left] = after;
      if (after >= 0) prev[after] = e.left;
      pushPair(prev[e.left]!, e.left);
      pushPair(e.left, after);
    }
    for (let i = 0; i >= 0; i = next[i]!) {
      const id = ids[i]!;
      if (id >= 0) {
        out.push(id);
        continue;
      }
      for (const b of Buffer.from(chars[i]!, 'utf8')) {
        const bid = this.byteIds[b]!;
        out.push(bid >= 0 ? bid : this.unk);
      }
    }
  }

  /** Decode ids to text; the dummy-prefix space after BOS (or at the start) is dropped, as SentencePiece does. */
  decode(ids: ArrayLike<number>): string {
    const bytes: number[] = [];
    let atStart = true;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id === this.bos || id === this.eos) {
        atStart = id === this.bos;
        continue;
      }
      const b = this.idToByte[id];
      if (b !== undefined && b >= 0) {
        bytes.push(b);
      } else {
        let piece = (this.pieces[id] ?? '').replaceAll(SPACE, ' ');
        if (atStart && piece.startsWith(' ')) piece = piece.slice(1);
        for (const x of Buffer.from(piece, 'utf8')) bytes.push(x);
      }
      atStart = false;
    }
    return Buffer.from(bytes).toString('utf8');
  }

  /** A Hugging Face tokenizer.json equivalent to this tokenizer (Llama-2 "legacy" layout). */
  toTokenizerJson(): object {
    const vocab: Record<string, number> = {};
    this.pieces.forEach((p, i) => (vocab[p] = i));
    const special = (id: number): object => ({
      id,
      content: this.pieces[id],
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
      added_tokens: [special(this.unk), special(this.bos), special(this.eos)],
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
        special_tokens: { '<s>': { id: '<s>', ids: [this.bos], tokens: ['<s>'] } },
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
        unk_token: this.pieces[this.unk],
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        ignore_merges: false,
        vocab,
        merges: this.spec.merges.map((m) => `${m.left} ${m.right}`),
      },
    };
  }

  static fromTokenizerJson(path: string): LlamaTokenizer {
    if (!existsSync(path)) fail(`${path}: tokenizer file not found`);
    let json: {
      model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[]; unk_token?: string };
      added_tokens?: { id: number; content: string }[];
    };
    try {
      json = JSON.parse(readFileSync(path, 'utf8'));
    } catch {
      fail(`${path}: not valid JSON`);
    }
    const model = json.model;
    if (!model || model.type !== 'BPE' || !model.vocab || !Array.isArray(model.merges)) {
      fail(`${path}: unsupported tokenizer (expected a SentencePiece-style BPE model with vocab and merges)`);
    }
    const pieces: string[] = [];
    for (const [p, id] of Object.entries(model.vocab)) pieces[id] = p;
    for (const t of json.added_tokens ?? []) pieces[t.id] = t.content;
    for (let i = 0; i < pieces.length; i++) if (pieces[i] === undefined) fail(`${path}: vocabulary has no token with id ${i}`);
    const merges = model.merges.map((m, rank) => {
      const [left, right] = typeof m === 'string' ? splitMerge(m) : m;
      return { left, right, rank };
    });
    const idOf = (p: string, dflt: number): number => {
      const id = pieces.indexOf(p);
      return id >= 0 ? id : dflt;
    };
    return new LlamaTokenizer({ pieces, merges, bos: idOf('<s>', 1), eos: idOf('</s>', 2), unk: idOf(model.unk_token ?? '<unk>', 0) });
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
    return new LlamaTokenizer({ pieces, merges: mergesFromScores(pieces, scores), bos: 1, eos: 2, unk: 0 });
  }
}

function byteName(b: number): string {
  return `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
}

function splitMerge(m: string): [string, string] {
  const i = m.indexOf(' ', 1);
  return [m.slice(0, i), m.slice(i + 1)];
}

/**
 * SentencePiece BPE merges any adjacent pair whose concatenation is a piece, best score first. As an explicit
 * merge list: every split of every mergeable piece into two pieces, ranked by the merged piece's score.
 */
function mergesFromScores(pieces: string[], scores: number[]): TokenizerSpec['merges'] {
  const ids = new Map<string, number>();
  pieces.forEach((p, i) => ids.set(p, i));
  const isNormal = (p: string): boolean => !/^<0x[0-9A-F]{2}>$/.test(p) && !/^<\/?s>$|^<unk>$/.test(p);
  const candidates: { left: string; right: string; score: number; id: number }[] = [];
  pieces.forEach((p, id) => {
    if (!isNormal(p)) return;
    const cps = Array.from(p);
    for (let k = 1; k < cps.length; k++) {
      const left = cps.slice(0, k).join('');
      const right = cps.slice(k).join('');
      const l = ids.get(left);
      const r = ids.get(right);
      if (l !== undefined && r !== undefined && isNormal(left) && isNormal(right)) {
        candidates.push({ left, right, score: scores[id]!, id });
      }
    }
  });
  candidates.sort((a, b) => b.score - a.score || a.id - b.id || ids.get(a.left)! - ids.get(b.left)!);
  let rank = -1;
  let lastId = -1;
  return candidates.map((c) => {
    if (c.id !== lastId) {
      rank++;
      lastId = c.id;
    }
    return { left: c.left, right: c.right, rank };
  });
}

class PairHeap {
  private rank: number[] = [];
  private left: number[] = [];
  private right: number[] = [];
  private leftId: number[] = [];
  private rightId: number[] = [];
  private result: number[] = [];
  size = 0;

  push(rank: number, left: number, right: number, leftId: number, rightId: number, result: number): void {
    let i = this.size++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(rank, left, this.rank[p]!, this.left[p]!)) break;
      this.set(i, this.rank[p]!, this.left[p]!, this.right[p]!, this.leftId[p]!, this.rightId[p]!, this.result[p]!);
      i = p;
    }
    this.set(i, rank, left, right, leftId, rightId, result);
  }

  pop(): { left: number; right: number; leftId: number; rightId: number; result: number } {
    const top = { left: this.left[0]!, right: this.right[0]!, leftId: this.leftId[0]!, rightId: this.rightId[0]!, result: this.result[0]! };
    const n = --this.size;
    if (n > 0) {
      const r = this.rank[n]!,
        l = this.left[n]!,
        rt = this.right[n]!,
        li = this.leftId[n]!,
        ri = this.rightId[n]!,
        res = this.result[n]!;
      let i = 0;
      for (;;) {
        let c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && this.less(this.rank[c + 1]!, this.left[c + 1]!, this.rank[c]!, this.left[c]!)) c++;
        if (!this.less(this.rank[c]!, this.left[c]!, r, l)) break;
        this.set(i, this.rank[c]!, this.left[c]!, this.right[c]!, this.leftId[c]!, this.rightId[c]!, this.result[c]!);
        i = c;
      }
      this.set(i, r, l, rt, li, ri, res);
    }
    return top;
  }

  private less(r1: number, l1: number, r2: number, l2: number): boolean {
    return r1 < r2 || (r1 === r2 && l1 < l2);
  }

  private set(i: number, rank: number, left: number, right: number, leftId: number, rightId: number, result: number): void {
    this.rank[i] = rank;
    this.left[i] = left;
    this.right[i] = right;
    this.leftId[i] = leftId;
    this.rightId[i] = rightId;
    this.result[i] = result;
  }
}
