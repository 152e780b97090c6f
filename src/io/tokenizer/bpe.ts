/**
 * The BPE model of the `tokenizers` library: a word starts as one symbol per code point (a code point that is no
 * piece becomes its <0xXX> byte pieces under byte_fallback, else the unknown piece, fused when fuse_unk); the
 * adjacent pair with the best merge rank is merged repeatedly, leftmost on ties. ignore_merges: a word that is a
 * piece is that piece.
 */

export interface BpeOptions {
  vocab: Map<string, number>;
  /** merges in priority order; pairs sharing a rank tie-break leftmost */
  merges: { left: string; right: string; rank: number }[];
  unk?: number;
  byteFallback: boolean;
  fuseUnk: boolean;
  ignoreMerges: boolean;
}

const WORD_CACHE_MAX = 200_000;
const CACHE_WORD_CHARS = 256;

export class Bpe {
  readonly vocab: Map<string, number>;
  private V: number;
  /** key left*V+right -> rank*V + resultId */
  private mergeTable = new Map<number, number>();
  private byteIds = new Int32Array(256).fill(-1);
  private allBytes: boolean;
  /** a long word may be cut before each "▁" that follows another character: no piece spans such a cut */
  readonly chunkable: boolean;
  /** otherwise, pairs of adjacent code points that some piece contains (lazily built): a long word may be cut between two single-character pieces no piece joins */
  private joined: Set<number> | undefined;
  /** word -> its ids (a single id as a number) */
  private cache = new Map<string, number | number[]>();
  // scratch space of the merge loop, reused from word to word
  private sym = new Int32Array(64);
  private prev = new Int32Array(64);
  private next = new Int32Array(64);
  private heap = new PairHeap();
  /** id of each single-UTF-16-unit piece, −1 when that character is no piece */
  private charIds = new Int32Array(0x10000).fill(-1);

  constructor(private readonly o: BpeOptions) {
    this.vocab = o.vocab;
    let max = 0;
    for (const id of o.vocab.values()) if (id > max) max = id;
    const V = (this.V = max + 1);
    for (let b = 0; b < 256; b++) {
      const id = o.vocab.get(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
      if (id !== undefined) this.byteIds[b] = id;
    }
    this.allBytes = !this.byteIds.includes(-1);
    for (const [p, id] of o.vocab) if (p.length === 1 && this.charIds[p.charCodeAt(0)] === -1) this.charIds[p.charCodeAt(0)] = id;
    for (const { left, right, rank } of o.merges) {
      const l = o.vocab.get(left);
      const r = o.vocab.get(right);
      const res = o.vocab.get(left + right);
      if (l === undefined || r === undefined || res === undefined) continue;
      const key = l * V + r;
      if (!this.mergeTable.has(key)) this.mergeTable.set(key, rank * V + res);
    }
    this.chunkable = true;
    for (const p of o.vocab.keys()) {
      if (/[^\u2581]\u2581/u.test(p)) {
        this.chunkable = false;
        break;
      }
    }
  }

  /** Append the ids of one pre-tokenized word. */
  encodeWord(word: string, out: number[]): void {
    if (word.length <= CACHE_WORD_CHARS) {
      let ids = this.cache.get(word);
      if (ids === undefined) {
        const fresh: number[] = [];
        this.encodeUncached(word, fresh);
        ids = fresh.length === 1 ? fresh[0]! : fresh;
        if (this.cache.size > WORD_CACHE_MAX) this.cache.clear();
        this.cache.set(word, ids);
      }
      if (typeof ids === 'number') out.push(ids);
      else for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
      return;
    }
    this.encodeLong(word, out);
  }

  /** Append the ids of one word without consulting or filling the cache (for callers that cache words themselves). */
  encodeWordUncached(word: string, out: number[]): void {
    if (word.length <= CACHE_WORD_CHARS) this.encodeUncached(word, out);
    else this.encodeLong(word, out);
  }

  private encodeLong(word: string, out: number[]): void {
    if (this.o.ignoreMerges && this.vocab.has(word)) {
      this.encodeUncached(word, out);
      return;
    }
    if (!this.chunkable) {
      this.encodeByJoins(word, out);
      return;
    }
    let start = 0;
    for (let i = word.indexOf('\u2581', 1); i > 0; i = word.indexOf('\u2581', i + 1)) {
      if (word.charCodeAt(i - 1) === 0x2581) continue;
      this.encodeWord(word.slice(start, i), out);
      start = i;
    }
    if (start === 0) this.encodeUncached(word, out);
    else this.encodeWord(word.slice(start), out);
  }

  /**
   * A long word cut wherever two adjacent characters are both pieces and no piece contains them side by side:
   * no merge can cross such a cut, so the parts encode independently to the same ids.
   */
  private encodeByJoins(word: string, out: number[]): void {
    const joined = (this.joined ??= this.joinedPairs());
    let start = 0;
    let prev = word.codePointAt(0)!;
    let prevIsPiece = this.vocab.has(String.fromCodePoint(prev));
    for (let i = prev > 0xffff ? 2 : 1; i < word.length;) {
      const c = word.codePointAt(i)!;
      const w = c > 0xffff ? 2 : 1;
      const isPiece = this.vocab.has(String.fromCodePoint(c));
      if (prevIsPiece && isPiece && !joined.has(prev * 0x110000 + c) && i - start > 0) {
        this.encodeWord(word.slice(start, i), out);
        start = i;
      }
      prev = c;
      prevIsPiece = isPiece;
      i += w;
    }
    if (start === 0) this.encodeUncached(word, out);
    else this.encodeWord(word.slice(start), out);
  }

  private joinedPairs(): Set<number> {
    const set = new Set<number>();
    for (const p of this.vocab.keys()) {
      let prev = -1;
      for (const ch of p) {
        const c = ch.codePointAt(0)!;
        if (prev >= 0) set.add(prev * 0x110000 + c);
        prev = c;
      }
    }
    return set;
  }

  private encodeUncached(word: string, out: number[]): void {
    if (this.o.ignoreMerges) {
      const id = this.vocab.get(word);
      if (id !== undefined) {
        out.push(id);
        return;
      }
    }
    const V = this.V;
    const ids: number[] = [];
    let lastUnk = false;
    for (let i = 0; i < word.length; i++) {
      const u = word.charCodeAt(i);
      let id: number;
      let ch: string | undefined;
      if (u < 0xd800 || u > 0xdbff || i + 1 === word.length) id = this.charIds[u]!;
      else {
        ch = word.slice(i, i + 2);
        i++;
        id = this.vocab.get(ch) ?? -1;
      }
      if (id >= 0) {
        ids.push(id);
        lastUnk = false;
        continue;
      }
      ch ??= word[i]!;
      if (this.o.byteFallback && (this.allBytes || this.hasBytes(ch))) {
        for (const b of Buffer.from(ch, 'utf8')) ids.push(this.byteIds[b]!);
        lastUnk = false;
        continue;
      }
      if (this.o.unk === undefined) continue;
      if (this.o.fuseUnk && lastUnk) continue;
      ids.push(this.o.unk);
      lastUnk = true;
    }
    const n = ids.length;
    if (n < 2) {
      for (const id of ids) out.push(id);
      return;
    }
    if (n > this.sym.length) {
      const cap = Math.max(n, 2 * this.sym.length);
      this.sym = new Int32Array(cap);
      this.prev = new Int32Array(cap);
      this.next = new Int32Array(cap);
    }
    const { sym, prev, next, mergeTable } = this;
    for (let i = 0; i < n; i++) {
      sym[i] = ids[i]!;
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const heap = this.heap;
    heap.size = 0;
    for (let i = 0; i + 1 < n; i++) {
      const m = mergeTable.get(sym[i]! * V + sym[i + 1]!);
      if (m !== undefined) heap.push(Math.floor(m / V), i, i + 1, sym[i]!, sym[i + 1]!, m % V);
    }
    while (heap.size > 0) {
      heap.pop();
      const e = heap.top;
      // stale entries: a side was merged away or changed since this pair was queued
      if (sym[e.left] !== e.leftId || sym[e.right] !== e.rightId || next[e.left] !== e.right) continue;
      sym[e.left] = e.result;
      sym[e.right] = -2;
      const after = next[e.right]!;
      next[e.left] = after;
      if (after >= 0) prev[after] = e.left;
      const before = prev[e.left]!;
      if (before >= 0) {
        const m = mergeTable.get(sym[before]! * V + sym[e.left]!);
        if (m !== undefined) heap.push(Math.floor(m / V), before, e.left, sym[before]!, sym[e.left]!, m % V);
      }
      if (after >= 0) {
        const m = mergeTable.get(sym[e.left]! * V + sym[after]!);
        if (m !== undefined) heap.push(Math.floor(m / V), e.left, after, sym[e.left]!, sym[after]!, m % V);
      }
    }
    for (let i = 0; i >= 0; i = next[i]!) out.push(sym[i]!);
  }

  private hasBytes(ch: string): boolean {
    for (const b of Buffer.from(ch, 'utf8')) if (this.byteIds[b]! < 0) return false;
    return true;
  }
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

  /** the entry the last pop() removed */
  readonly top = { left: 0, right: 0, leftId: 0, rightId: 0, result: 0 };

  pop(): void {
    const top = this.top;
    top.left = this.left[0]!;
    top.right = this.right[0]!;
    top.leftId = this.leftId[0]!;
    top.rightId = this.rightId[0]!;
    top.result = this.result[0]!;
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
