import { seededRandom } from '../../src/calib/windows.js';

/**
 * An independent, deliberately plain transcription of llama2.c's run.c forward pass (one token at a time,
 * interleaved-pair RoPE, its own KV cache) over a raw llama2.c checkpoint. Tests hold the converted
 * Hugging Face model against it.
 */
export class Llama2cReference {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
  private w: Record<string, Float32Array> = {};
  private keyCache: Float32Array;
  private valueCache: Float32Array;

  constructor(bytes: Uint8Array) {
    const hdr = new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 28));
    [this.dim, this.hidden, this.layers, this.heads, this.kvHeads] = [hdr[0]!, hdr[1]!, hdr[2]!, hdr[3]!, hdr[4]!];
    const shared = hdr[5]! > 0;
    this.vocab = Math.abs(hdr[5]!);
    this.seqLen = hdr[6]!;
    const f = new Float32Array(bytes.buffer.slice(bytes.byteOffset + 28, bytes.byteOffset + bytes.byteLength));
    const hs = this.dim / this.heads;
    const kvDim = hs * this.kvHeads;
    let o = 0;
    const take = (name: string, n: number): void => {
      this.w[name] = f.subarray(o, o + n);
      o += n;
    };
    const { dim, hidden, layers, vocab } = this;
    take('tok', vocab * dim);
    take('rmsAtt', layers * dim);
    take('wq', layers * dim * dim);
    take('wk', layers * dim * kvDim);
    take('wv', layers * dim * kvDim);
    take('wo', layers * dim * dim);
    take('rmsFfn', layers * dim);
    take('w1', layers * dim * hidden);
    take('w2', layers * hidden * dim);
    take('w3', layers * dim * hidden);
    take('rmsFinal', dim);
    o += this.seqLen * hs; // freq_cis_real + freq_cis_imag
    if (shared) this.w['cls'] = this.w['tok']!;
    else take('cls', vocab * dim);
    this.keyCache = new Float32Array(layers * this.seqLen * kvDim);
    this.valueCache = new Float32Array(layers * this.seqLen * kvDim);
  }

  /** logits for `token` at position `pos` (positions must be fed in order from 0) */
  forward(token: number, pos: number): Float32Array {
    const { dim, hidden, layers, heads, kvHeads, seqLen } = this;
    const hs = dim / heads;
    const kvDim = hs * kvHeads;
    const kvMul = heads / kvHeads;
    const W = this.w;
    const x = Float32Array.from(W['tok']!.subarray(token * dim, (token + 1) * dim));
    const rmsnorm = (v: Float32Array, weight: Float32Array): Float32Array => {
      let ss = 0;
      for (const a of v) ss += a * a;
      ss = 1 / Math.sqrt(ss / v.length + 1e-5);
      return v.map((a, j) => weight[j]! * (ss * a));
    };
    const matmul = (v: Float32Array, w: Float32Array, n: number, d: number): Float32Array => {
      const out = new Float32Array(d);
      for (let i = 0; i < d; i++) {
        let s = 0;
        for (let j = 0; j < n; j++) s += w[i * n + j]! * v[j]!;
        out[i] = s;
      }
      return out;
    };
    for (let l = 0; l < layers; l++) {
      const xb = rmsnorm(x, W['rmsAtt']!.subarray(l * dim, (l + 1) * dim));
      const q = matmul(xb, W['wq']!.subarray(l * dim * dim), dim, dim);
      const k = matmul(xb, W['wk']!.subarray(l * dim * kvDim), dim, kvDim);
      const v = matmul(xb, W['wv']!.subarray(l * dim * kvDim), dim, kvDim);
      for (let i = 0; i < dim; i += 2) {
        const headDim = i % hs;
        const freq = 1 / 10000 ** (headDim / hs);
        const val = pos * freq;
        const fcr = Math.cos(val);
        const fci = Math.sin(val);
        const rotn = i < kvDim ? 2 : 1;
        for (let r = 0; r < rotn; r++) {
          const vec = r === 0 ? q : k;
          const v0 = vec[i]!;
          const v1 = vec[i + 1]!;
          vec[i] = v0 * fcr - v1 * fci;
          vec[i + 1] = v0 * fci + v1 * fcr;
        }
      }
      const lo = l * seqLen * kvDim;
      this.keyCache.set(k, lo + pos * kvDim);
      this.valueCache.set(v, lo + pos * kvDim);
      const xb2 = new Float32Array(dim);
      for (let h = 0; h < heads; h++) {
        const att = new Float64Array(pos + 1);
        for (let t = 0; t <= pos; t++) {
          let score = 0;
          for (let i = 0; i < hs; i++) score += q[h * hs + i]! * this.keyCache[lo + t * kvDim + Math.floor(h / kvMul) * hs + i]!;
          att[t] = score / Math.sqrt(hs);
        }
        const max = Math.max(...att);
        let sum = 0;
        for (let t = 0; t <= pos; t++) sum += att[t] = Math.exp(att[t]! - max);
        for (let t = 0; t <= pos; t++) {
          for (let i = 0; i < hs; i++)
            xb2[h * hs + i]! += (att[t]! / sum) * this.valueCache[lo + t * kvDim + Math.floor(h / kvMul) * hs + i]!;
        }
      }
      const ao = matmul(xb2, W['wo']!.subarray(l * dim * dim), dim, dim);
      for (let i = 0; i < dim; i++) x[i]! += ao[i]!;
      const xf = rmsnorm(x, W['rmsFfn']!.subarray(l * dim, (l + 1) * dim));
      const h1 = matmul(xf, W['w1']!.subarray(l * dim * hidden), dim, hidden);
      const h3 = matmul(xf, W['w3']!.subarray(l * dim * hidden), dim, hidden);
      for (let i = 0; i < hidden; i++) h1[i] = (h1[i]! / (1 + Math.exp(-h1[i]!))) * h3[i]!;
      const down = matmul(h1, W['w2']!.subarray(l * dim * hidden), hidden, dim);
      for (let i = 0; i < dim; i++) x[i]! += down[i]!;
    }
    return matmul(rmsnorm(x, W['rmsFinal']!), W['cls']!, dim, this.vocab);
  }
}

/** A random llama2.c checkpoint (deterministic), optionally with a separate classifier and grouped kv heads. */
export function randomLlama2c(opts: {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
  shared: boolean;
  seed: number;
}): Uint8Array {
  const { dim, hidden, layers, heads, kvHeads, vocab, seqLen, shared } = opts;
  const hs = dim / heads;
  const kvDim = hs * kvHeads;
  const n =
    vocab * dim +
    layers * dim * 2 +
    layers * dim * dim * 2 +
    layers * dim * kvDim * 2 +
    layers * dim * hidden * 3 +
    dim +
    seqLen * hs +
    (shared ? 0 : vocab * dim);
  const rand = seededRandom(opts.seed);
  const f = new Float32Array(n).map(() => (rand() - 0.5) * 0.5);
  const out = new Uint8Array(28 + 4 * n);
  new Int32Array(out.buffer, 0, 7).set([dim, hidden, layers, heads, kvHeads, shared ? vocab : -vocab, seqLen]);
  new Float32Array(out.buffer, 28).set(f);
  return out;
}
