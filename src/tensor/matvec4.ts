import v8 from 'node:v8';
import type { LinearKernel, PackedLinearWeights } from './backend.js';
import { streamValue } from './bit-stream.js';
import { quantizeInt8Blocks, type Int8Blocks } from './int8-activations.js';
import { MATVEC4_WASM } from './matvec4-wasm.js';
import { nbitsLayout, type NBitsLayout } from './ort-linear.js';
import { PoolFunction, poolWidth } from './wasm-pool.js';

/**
 * Generation's packed 4-bit layers, one row at a time: the WebAssembly SIMD kernel of scripts/wasm/matvec4.mjs
 * over the codes in a shared memory, its rows split between this thread and wasm-pool.ts's helpers, with the
 * activations quantized to int8 per block (int8-activations.ts). onnxruntime's MatMulNBits, which runs them
 * otherwise, read a whole Llama-2-7B token's layers at 23-25 GB/s here; this kernel reads 11008x4096 layers at
 * 17-19 GB/s on one thread and 31-33 GB/s on two (README, Scale). It is a batch-1 kernel: several rows are
 * several passes over the weights, so evaluation keeps onnxruntime (Backend.packedLinear's `oneRow`).
 *
 * test/matvec4.test.ts holds it to ref.ts's packedMatmulInt8, the same arithmetic in float64.
 */

let compiled: WebAssembly.Module | null | undefined;
/**
 * The kernel uses relaxed SIMD's i16x8.relaxed_dot_i8x16_i7x16_s, which Node 20's V8 has behind a flag (on by
 * default from V8 11.4, Node 22). The flag is read when a module is compiled, so setting it here is enough; a V8
 * without the instruction leaves the layers on onnxruntime.
 */
function kernelModule(): WebAssembly.Module | undefined {
  if (compiled === undefined) {
    const bytes = Buffer.from(MATVEC4_WASM, 'base64');
    if (!WebAssembly.validate(bytes)) v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    compiled = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
  }
  return compiled ?? undefined;
}

const PAGE = 65536;
const MAX_PAGES = 65536;

/**
 * Layers share memories, each up to wasm32's 4 GiB: V8 reserves a shared memory's whole maximum of address space
 * (with guard regions, about 10 GB), so a memory per layer would run out of it at 7B (128 layers).
 */
interface Arena {
  memory: WebAssembly.Memory;
  kernel: PoolFunction;
  used: number;
  live: number;
}
let open: Arena | undefined;

function place(bytes: number): { arena: Arena; at: number } {
  if (bytes > MAX_PAGES * PAGE) throw new RangeError(`a ${bytes}-byte layer does not fit a WebAssembly memory`);
  if (!open || open.used + bytes > MAX_PAGES * PAGE) {
    const memory = new WebAssembly.Memory({ initial: 1, maximum: MAX_PAGES, shared: true });
    open = { memory, kernel: new PoolFunction(kernelModule()!, memory, 'matvec4'), used: 0, live: 0 };
  }
  const arena = open;
  const at = arena.used;
  arena.used += Math.ceil(bytes / 16) * 16;
  const pages = Math.ceil(arena.used / PAGE) - arena.memory.buffer.byteLength / PAGE;
  if (pages > 0) arena.memory.grow(pages);
  arena.live++;
  return { arena, at };
}

function release(arena: Arena): void {
  if (--arena.live > 0) return;
  arena.kernel.dispose();
  if (open === arena) open = undefined;
}

/** the kernel's block size: the layout's, at least 32 (one 16-byte step of codes) */
const MIN_BLOCK = 32;

/** The layout the kernel runs a layer in, or undefined where it cannot (bits, shape, groups, or no relaxed SIMD). */
export function matvec4Layout(p: PackedLinearWeights): NBitsLayout | undefined {
  if (p.bits !== 4 || p.cols % MIN_BLOCK !== 0 || !kernelModule()) return undefined;
  const layout = nbitsLayout(p.gIdx);
  return layout && layout.blockSize >= MIN_BLOCK ? layout : undefined;
}

/**
 * The codes in the kernel's order: each row's cols/2 bytes, byte j of each run of 16 holding (in the kernel's column
 * order) column j of that run's 32 in its low nibble and column 16 + j in its high one.
 */
function writeCodes(p: PackedLinearWeights, order: Int32Array | undefined, out: Uint8Array): void {
  const { rows, cols, qweight } = p;
  const half = cols / 2;
  if (!order) {
    // GPTQ's word w holds columns 8w..8w+7 of each row, nibble i column 8w + i: words 4k + t and 4k + 2 + t are
    // the low and high nibbles of bytes 8t..8t+7 of run k
    for (let k = 0; k < cols / 32; k++) {
      for (let t = 0; t < 2; t++) {
        const [lo, hi] = [(4 * k + t) * rows, (4 * k + 2 + t) * rows];
        for (let r = 0; r < rows; r++) {
          const [a, b] = [qweight[lo + r]!, qweight[hi + r]!];
          const at = r * half + 16 * k + 8 * t;
          for (let i = 0; i < 8; i++) out[at + i] = ((a >>> (4 * i)) & 15) | (((b >>> (4 * i)) & 15) << 4);
        }
      }
    }
    return;
  }
  const words = cols / 8;
  const row = new Int32Array(words);
  for (let r = 0; r < rows; r++) {
    for (let w = 0; w < words; w++) row[w] = qweight[w * rows + r]!;
    for (let i = 0; i < cols; i++) {
      const code = streamValue((w) => row[w]!, order[i]!, 4);
      const at = r * half + 16 * (i >>> 5) + (i & 15);
      out[at] = out[at]! | (i & 16 ? code << 4 : code);
    }
  }
}

/**
 * Rows a thread takes at the least: below this the wake-up of a helper costs more than its share saves (a
 * 4096 x 4096 layer is 8 MiB of codes; TinyLlama's k and v, 256 x 2048, are 256 KiB).
 */
const SERIAL_BELOW_BYTES = 1 << 20;

/** The kernel for a layer (undefined where matvec4Layout is); LinearKernel.apply runs its rows one at a time. */
export function openMatvec4(p: PackedLinearWeights): LinearKernel | undefined {
  const layout = matvec4Layout(p);
  if (!layout) return undefined;
  const { rows, cols } = p;
  const { blockSize, order, blockGroup } = layout;
  const groups = p.scales.length / rows;
  const blocks = blockGroup.length;
  const sizes = { codes: (rows * cols) / 2, sm: rows * groups * 8, bg: blocks * 4, xq: cols, xs: blocks * 4, cx: blocks * 4, y: rows * 4 };
  const offsets: Partial<Record<keyof typeof sizes, number>> = {};
  let bytes = 0;
  for (const [name, size] of Object.entries(sizes) as [keyof typeof sizes, number][]) {
    offsets[name] = bytes;
    bytes += Math.ceil(size / 16) * 16;
  }
  const { arena, at } = place(bytes);
  const o = Object.fromEntries(Object.entries(offsets).map(([k, v]) => [k, at + v!])) as Record<keyof typeof sizes, number>;
  const buf = arena.memory.buffer;
  writeCodes(p, order, new Uint8Array(buf, o.codes, sizes.codes));
  const sm = new Float32Array(buf, o.sm, rows * groups * 2);
  const zeroWords = rows / 8;
  for (let g = 0; g < groups; g++) {
    for (let r = 0; r < rows; r++) {
      const s = p.scales[g * rows + r]!;
      sm[2 * (r * groups + g)] = s;
      sm[2 * (r * groups + g) + 1] = s * streamValue((w) => p.qzeros[g * zeroWords + w]!, r, 4);
    }
  }
  new Int32Array(buf, o.bg, blocks).set(blockGroup);
  const x: Int8Blocks = {
    codes: new Int8Array(buf, o.xq, cols),
    scale: new Float32Array(buf, o.xs, blocks),
    sum: new Float32Array(buf, o.cx, blocks),
  };
  const y = new Float32Array(buf, o.y, rows);
  const threads = sizes.codes < SERIAL_BELOW_BYTES ? 1 : poolWidth();
  const share = Math.ceil(rows / threads);
  const shares = Array.from({ length: threads }, (_, i) => [
    o.codes,
    o.sm,
    o.bg,
    o.xq,
    o.xs,
    o.cx,
    o.y,
    Math.min(rows, i * share),
    Math.min(rows, (i + 1) * share),
    cols,
    blockSize,
    groups,
  ]);
  let disposed = false;
  return {
    rows,
    cols,
    weightBytes: sizes.codes + sizes.sm + sizes.bg,
    async apply(input, m) {
      if (disposed) throw new Error('the layer was disposed');
      const out = new Float32Array(m * rows);
      for (let i = 0; i < m; i++) {
        quantizeInt8Blocks(input.subarray(i * cols, (i + 1) * cols), blockSize, x, order);
        arena.kernel.run(shares);
        out.set(y, i * rows);
      }
      return out;
    },
    async dispose() {
      if (disposed) return;
      disposed = true;
      release(arena);
    },
  };
}
