import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import type { LinearKernel, LinearOptions, PackedLinearWeights } from './backend.js';
import { nbits4Blocks } from './ort-linear.js';
import { withGatedOutput } from './ref.js';

/**
 * The native 4-bit kernel (src/tensor/native/nbits4.c, compiled by `npm run build` into build/nbits4.node): 4-bit
 * GPTQ layers whose groups start on multiples of 128 columns, times int8 activations, the form generation runs in
 * (loadModel's `activations: 'int8'`). Elsewhere onnxruntime's MatMulNBits does the same product. Absent (not
 * built, or a CPU without AVX2) or turned off with GPTQ_TS_NATIVE=0, layers run on MatMulNBits instead.
 */
interface Addon {
  isa(): string;
  useIsa(name: string): void;
  /** codes: GPTQ's qweight words [cols/8, rows], or row-major blocks [rows, blocks, 64] bytes */
  open(codes: Int32Array | Uint8Array, scales: Float32Array, zeros: Uint8Array, rows: number, blocks: number, order: Int32Array | null): object;
  matmul(layer: object, x: Float32Array, m: number, y: Float32Array, threads: number): void;
  close(layer: object): void;
}

let addon: Addon | null | undefined;

/** The addon, or null where it is not built, not usable on this CPU, or turned off. */
export function nativeKernel(): Addon | null {
  if (addon !== undefined) return addon;
  addon = null;
  if (process.env['GPTQ_TS_NATIVE'] === '0') return addon;
  try {
    const loaded = createRequire(import.meta.url)('../../build/nbits4.node') as Addon;
    if (loaded.isa()) addon = loaded;
  } catch (e) {
    // not built here (build-native.mjs said why); anything else is a broken build
    if ((e as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw e;
  }
  return addon;
}

/** The instruction set the native kernel runs on ('avx512vnni', 'avx2'), or undefined where it is not in use. */
export const nativeIsa = (): string | undefined => nativeKernel()?.isa() || undefined;

/** A packed layer on the native kernel, or undefined where it is absent or the layer's layout is not its own. */
export function nativeLinear(p: PackedLinearWeights, opts?: LinearOptions): LinearKernel | undefined {
  const k = nativeKernel();
  const blocks = k && nbits4Blocks(p);
  if (!k || !blocks) return undefined;
  const layer = k.open(blocks.codes, blocks.scales, blocks.zeros, p.rows, blocks.blocks, blocks.order ?? null);
  const threads = availableParallelism();
  const { rows, cols } = p;
  return withGatedOutput(
    {
      rows,
      cols,
      weightBytes: blocks.codes.byteLength + blocks.scales.byteLength + blocks.zeros.byteLength + (blocks.order?.byteLength ?? 0),
      async apply(x, m) {
        const y = new Float32Array(m * rows);
        k.matmul(layer, x, m, y, threads);
        return y;
      },
      dispose: async () => k.close(layer),
    },
    opts,
  );
}
