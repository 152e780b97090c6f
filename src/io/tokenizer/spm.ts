/** llama2.c's tokenizer.bin marks no token types: its byte, BOS/EOS and unknown pieces are known by name. */
const isNormal = (p: string): boolean => !/^<0x[0-9A-F]{2}>$/.test(p) && !/^<\/?s>$|^<unk>$/.test(p);

/**
 * SentencePiece BPE merges any adjacent pair whose concatenation is a piece, best score first. As an explicit
 * merge list: every split of every mergeable piece into two pieces, ranked by the merged piece's score.
 */
export function mergesFromScores(
  pieces: string[],
  scores: ArrayLike<number>,
  mergeable: (piece: string, id: number) => boolean = isNormal,
): { left: string; right: string; rank: number }[] {
  const ids = new Map<string, number>();
  pieces.forEach((p, i) => ids.set(p, i));
  const candidates: { left: string; right: string; score: number; id: number }[] = [];
  pieces.forEach((p, id) => {
    if (!mergeable(p, id)) return;
    const cps = Array.from(p);
    for (let k = 1; k < cps.length; k++) {
      const left = cps.slice(0, k).join('');
      const right = cps.slice(k).join('');
      const l = ids.get(left);
      const r = ids.get(right);
      if (l !== undefined && r !== undefined && mergeable(left, l) && mergeable(right, r)) {
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
