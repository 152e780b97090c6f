/**
 * Added tokens as the `tokenizers` library finds them in text: leftmost-longest matches of their literal
 * content; single_word matches only between non-word characters; lstrip/rstrip take the whitespace beside them.
 */

export interface AddedToken {
  id: number;
  content: string;
  special: boolean;
  normalized: boolean;
  lstrip: boolean;
  rstrip: boolean;
  singleWord: boolean;
}

/** A piece of text: an added token's id, or text for the model (id -1). */
export interface Segment {
  id: number;
  text: string;
  /** offset of the piece in the string it was cut from */
  start: number;
}

interface TrieNode {
  next: Map<number, TrieNode>;
  token?: AddedToken;
}

const WORD = /[\p{Alphabetic}\p{N}]/u;
const SPACE = /[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;

export class AddedTokenMatcher {
  private root: TrieNode = { next: new Map() };
  private firstChars: RegExp;
  readonly size: number;

  constructor(tokens: AddedToken[]) {
    const first = new Set<string>();
    for (const t of tokens) {
      if (t.content.length === 0) continue;
      let node = this.root;
      for (let i = 0; i < t.content.length; i++) {
        const c = t.content.charCodeAt(i);
        let n = node.next.get(c);
        if (!n) node.next.set(c, (n = { next: new Map() }));
        node = n;
      }
      node.token ??= t;
      first.add(t.content[0]!);
    }
    this.size = first.size;
    const cls = [...first].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('');
    this.firstChars = new RegExp(first.size ? `[${cls}]` : '[^\\s\\S]', 'g');
  }

  /** Cut s at the added tokens; empty text pieces are dropped. */
  split(s: string): Segment[] {
    const out: Segment[] = [];
    if (this.size === 0) {
      out.push({ id: -1, text: s, start: 0 });
      return out;
    }
    let startOffset = 0;
    const re = this.firstChars;
    re.lastIndex = 0;
    for (let m = re.exec(s); m !== null; m = re.exec(s)) {
      const pos = m.index;
      // longest token starting here
      let node: TrieNode | undefined = this.root;
      let best: AddedToken | undefined;
      let bestEnd = pos;
      for (let i = pos; i < s.length; i++) {
        node = node.next.get(s.charCodeAt(i));
        if (!node) break;
        if (node.token) {
          best = node.token;
          bestEnd = i + 1;
        }
      }
      if (!best) continue;
      let start = pos;
      let stop = bestEnd;
      re.lastIndex = stop;
      if (best.singleWord) {
        const startOk = start === 0 || !WORD.test(charBefore(s, start));
        const stopOk = stop === s.length || !WORD.test(charAt(s, stop));
        if (!startOk || !stopOk) continue;
      }
      if (best.lstrip) {
        let a = start;
        while (a > 0 && SPACE.test(charBefore(s, a))) a -= charBefore(s, a).length;
        start = Math.max(a, startOffset);
      }
      if (best.rstrip) {
        while (stop < s.length && SPACE.test(charAt(s, stop))) stop += charAt(s, stop).length;
        re.lastIndex = stop;
      }
      if (startOffset < start) out.push({ id: -1, text: s.slice(startOffset, start), start: startOffset });
      out.push({ id: best.id, text: s.slice(start, stop), start });
      startOffset = stop;
    }
    if (startOffset < s.length) out.push({ id: -1, text: s.slice(startOffset), start: startOffset });
    return out;
  }
}

function charAt(s: string, i: number): string {
  return String.fromCodePoint(s.codePointAt(i)!);
}

function charBefore(s: string, i: number): string {
  const c = s.charCodeAt(i - 1);
  return c >= 0xdc00 && c <= 0xdfff && i >= 2 ? s.slice(i - 2, i) : s.slice(i - 1, i);
}
