import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import type { AttentionShape, HalfKvCache, KvShape, LinearKernel, LinearOptions, PackedLinearWeights } from './backend.js';
import { nativeBlocks } from './ort-linear.js';
import { withGatedOutput } from './ref.js';

/**
 * The native kernels (src/tensor/native/kernels.c, compiled by `npm run build` into build/kernels.node): 4- and
 * 8-bit GPTQ layers whose groups start on multiples of 16 columns, times int8 activations, the form generation runs
 * in (loadModel's `activations: 'int8'`), where onnxruntime's MatMulNBits would do the same product; a decode step's
 * attention over a float32 or float16 KV cache; SwiGLU's gating and the small norms. Absent (not built, or a CPU
 * without AVX2) or turned off with GPTQ_TS_NATIVE=0, those run on onnxruntime (or in TypeScript) instead.
 */
interface Addon {
  isa(): string;
  useIsa(name: string): void;
  /** codes: GPTQ's qweight words [cols·bits/32, rows], or row-major blocks [rows, blocks, block·bits/8] bytes; bits 4 or 8, block 16-128 */
  open(
    codes: Int32Array | Uint8Array,
    scales: Float32Array,
    zeros: Uint8Array,
    rows: number,
    blocks: number,
    order: Int32Array | null,
    bits: number,
    block: number,
  ): object;
  matmul(layer: object, x: Float32Array, m: number, y: Float32Array, threads: number): void;
  close(layer: object): void;
  /** the bytes a product streams: codes, scales (float16 where every scale is one, else float32), zero points, order */
  bytes(layer: object): number;
  attend(
    q: Float32Array,
    k: Float32Array | Uint16Array,
    v: Float32Array | Uint16Array,
    out: Float32Array,
    heads: number,
    kvHeads: number,
    d: number,
    lo: number,
    ctx: number,
    capacity: number,
    scale: number,
    threads: number,
  ): void;
  rmsNorm(x: Float32Array, w: Float32Array, rows: number, eps: number, out: Float32Array): void;
  /** out [m, half] = silu(gate)·up of y [m, 2·half], each row gate then up */
  siluMul(y: Float32Array, m: number, half: number, out: Float32Array): void;
  storeHalf(src: Float32Array, dst: Uint16Array, kvHeads: number, d: number, capacity: number, start: number, seq: number): void;
}

let addon: Addon | null | undefined;

/** The addon, or null where it is not built, not usable on this CPU, or turned off. */
export function nativeKernel(): Addon | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.env['GPTQ_TS_NATIVE'] === '0') return addon;
  try {
    const loaded = createRequire(import.meta.url)('../../build/kernels.node') as Addon;
    if (loaded.isa()) addon = loaded;
  } catch (e) {
    // not built here (build-native.mjs said why); anything else is a broken build
    if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw e;
  }
  return addon;
}

/** Turn the native kernels off (or back on) for what is prepared or run from now on: tests run both paths. */
export function useNativeKernel(on: boolean): void {
  addon = on ? undefined : null;
}

/** The instruction set the native kernel runs on ('avx512vnni', 'avx2'), or undefined where it is not in use. */
export const nativeIsa = (): string | undefined => nativeKernel()?.isa() || undefined;

/** A packed layer on the native kernel, or undefined where it is absent or the layer's layout is not its own. */
export function nativeLinear(p: PackedLinearWeights, opts?: LinearOptions): LinearKernel | undefined {
  const k = nativeKernel();
  const blocks = k && nativeBlocks(p);
  if (!k || !blocks) return undefined;
  const layer = k.open(blocks.codes, blocks.scales, blocks.zeros, p.rows, blocks.blocks, blocks.order ?? null, p.bits, blocks.blockSize);
  const threads = availableParallelism();
  const { rows, cols } = p;
  const plain: LinearKernel = {
    rows,
    cols,
    weightBytes: k.bytes(layer),
    async apply(x, m) {
      const y = new Float32Array(m * rows);
      k.matmul(layer, x, m, y, threads);
      return y;
    },
    dispose: async () => k.close(layer),
  };
  if (opts?.gated !== 'silu') return withGatedOutput(plain, opts);
  // SwiGLU's gating on the stacked product, natively (withGatedOutput's Math.exp per value cost a 7B token ~5 ms)
  const half = rows / 2;
  return {
    ...plain,
    gated: 'silu',
    async apply(x, m) {
      const y =
        m * rows <= SCRATCH_FLOATS ? (scratch ??= new Float32Array(SCRATCH_FLOATS)).subarray(0, m * rows) : new Float32Array(m * rows);
      k.matmul(layer, x, m, y, threads);
      const out = new Float32Array(m * half);
      k.siluMul(y, m, half, out);
      return out;
    },
  };
}

/**
 * A decode step's stacked gate/up product, used up by the gating at once: one buffer for every layer rather than a
 * fresh one each call (a quarter of a 7B token's 11 MB of new arrays, whose external memory sets V8's collections
 * off: 2-4 ms a token). Prompts' larger products get their own.
 */
const SCRATCH_FLOATS = 1 << 18;
let scratch: Float32Array | undefined;

/** RMSNorm of rows of x (the small ones of a decode step) on the native kernel, or undefined where it is absent. */
export function nativeRmsNorm(x: Float32Array, w: Float32Array, rows: number, eps: number): Float32Array | undefined {
  const n = nativeKernel();
  if (!n) return undefined;
  const out = new Float32Array(x.length);
  n.rmsNorm(x, w, rows, eps, out);
  return out;
}

/**
 * One new position's attention over a head-major KV cache (AttentionShape.kvCapacity, batch 1, no soft-cap or ALiBi,
 * head size a multiple of 8), float32 or float16, on the native kernel; undefined where it is absent or the shape
 * is not its own.
 */
export function nativeDecodeAttention(
  q: Float32Array,
  k: Float32Array | Uint16Array,
  v: Float32Array | Uint16Array,
  sh: AttentionShape,
): Float32Array | undefined {
  const n = nativeKernel();
  const { batch, seq, ctx, heads, kvHeads, headDim, kvCapacity, window } = sh;
  if (!n || !kvCapacity || batch !== 1 || seq !== 1 || !decodeShape(sh)) return undefined;
  const out = new Float32Array(heads * headDim);
  const lo = window ? Math.max(0, ctx - window) : 0;
  n.attend(q, k, v, out, heads, kvHeads, headDim, lo, ctx, kvCapacity, 1 / Math.sqrt(headDim), availableParallelism());
  return out;
}

const decodeShape = (sh: KvShape): boolean => !sh.softcap && !sh.alibi && sh.headDim % 8 === 0;

/** A float16 KV cache on the native kernels, where they are built and serve this shape. */
export function nativeHalfKv(sh: KvShape): HalfKvCache | undefined {
  const n = nativeKernel();
  if (!n || !decodeShape(sh)) return undefined;
  const { kvHeads, headDim } = sh;
  return {
    store: (src, dst, capacity, start, seq) => n.storeHalf(src, dst, kvHeads, headDim, capacity, start, seq),
    attend(q, k, v, step) {
      const out = nativeDecodeAttention(q, k, v, step);
      if (!out) throw new Error('a float16 KV cache is read one new position at a time');
      return out;
    },
  };
}
