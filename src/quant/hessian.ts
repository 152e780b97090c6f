import type { Backend } from '../tensor/index.js';
import type { Gemm64 } from '../tensor/cholesky.js';
import { prepareHessian, type GptqOptions, type PreparedHessian } from './gptq.js';

/**
 * Rows of activations per XᵀX product at most. The forward hands over chunks its activation budget allows (2048
 * rows for an 8B model's 14336-wide MLP); each product then also pays a float64 fold of the whole triangle and
 * the copy of its panels out of onnxruntime, the same at any row count. Measured (AVX-512 2-core, 2 threads,
 * seconds per 2048 rows): 14336 wide 1.90 at 2048 rows a product, 1.77 at 4096, 1.44 at 8192; 4096 wide 0.22,
 * 0.14, 0.19.
 */
const GRAM_ROWS = 8192;
/** and at most this many floats of held rows (512 MiB), for wider layers than an 8B's */
const GRAM_FLOATS = 2 ** 27;

/**
 * H = 2/n · Σ x·xᵀ over a layer's calibration inputs, n counting sequences, accumulated batch by batch with
 * the reference's running rescale (H ← H·n/(n+b), then H += 2/(n+b) · XᵀX) so any number of batches
 * streams through in float64 without growing sums. Batches are held until GRAM_ROWS rows have come and then
 * multiplied as one: in exact arithmetic the same H (the batches' XᵀX summed in float32 first, as the reference
 * sums its whole H in float32).
 *
 * For GPTQv2's asymmetric calibration it also accumulates dXXᵀ = 2/n · Σ (x̃ − x)·xᵀ, x̃ being the same
 * position's input in the full-precision model, with the same rescale.
 */
export class HessianAccumulator {
  readonly dXXt?: Float64Array;
  sequences = 0;
  /** H, kept current on and above the diagonal only (half the accumulation) and mirrored when read */
  private readonly upper: Float64Array;
  private mirrored = true;
  /** rows folded into H so far: a non-finite input is named by its row among all the layer's inputs */
  private rowsFolded = 0;
  private readonly capacity: number;
  /** batches not yet multiplied: their rows (and the full-precision model's), sequences */
  private held?: { x: Float32Array; xfp?: Float32Array; rows: number; sequences: number };

  constructor(
    readonly cols: number,
    private backend: Backend,
    asymmetric = false,
  ) {
    this.upper = new Float64Array(cols * cols);
    if (asymmetric) this.dXXt = new Float64Array(cols * cols);
    this.capacity = Math.max(1, Math.min(GRAM_ROWS, Math.floor(GRAM_FLOATS / cols)));
  }

  /** H; `flush` first once the last batch is added */
  get h(): Float64Array {
    if (this.held?.rows) throw new Error('HessianAccumulator: flush() before reading H');
    if (!this.mirrored) mirrorUpper(this.upper, this.cols);
    this.mirrored = true;
    return this.upper;
  }

  /**
   * What the sweep needs from H (prepareHessian), for every layer that shares it; GPTQv2's correction from dXXᵀ,
   * weighted by `alpha`, when accumulated asymmetrically. `flush` first.
   */
  prepare(
    opts: Pick<GptqOptions, 'actOrder' | 'order' | 'percdamp'> & { alpha: number },
    warn: (msg: string) => void,
    gemm64: Gemm64,
  ): Promise<PreparedHessian> {
    return prepareHessian(this.h, this.cols, opts, warn, this.dXXt && { dXXt: this.dXXt, alpha: opts.alpha }, gemm64);
  }

  /** x: [rows, cols] activations belonging to `sequences` sequences; xfp: the full-precision model's (asymmetric only) */
  async add(x: Float32Array, rows: number, sequences: number, xfp?: Float32Array): Promise<void> {
    if (this.dXXt && !xfp) throw new Error('asymmetric calibration needs the full-precision inputs');
    if (this.held && this.held.rows + rows > this.capacity) await this.flush();
    if (rows >= this.capacity) return this.fold(x, rows, sequences, xfp);
    const cols = this.cols;
    this.held ??= {
      x: new Float32Array(this.capacity * cols),
      xfp: this.dXXt && new Float32Array(this.capacity * cols),
      rows: 0,
      sequences: 0,
    };
    const held = this.held;
    held.x.set(x.subarray(0, rows * cols), held.rows * cols);
    held.xfp?.set(xfp!.subarray(0, rows * cols), held.rows * cols);
    held.rows += rows;
    held.sequences += sequences;
    if (held.rows === this.capacity) await this.flush();
  }

  /** multiplies the batches held; their buffers are kept for the next ones */
  async flush(): Promise<void> {
    const held = this.held;
    if (!held?.rows) return;
    const [rows, sequences] = [held.rows, held.sequences];
    held.rows = held.sequences = 0;
    const n = rows * this.cols;
    await this.fold(held.x.subarray(0, n), rows, sequences, held.xfp?.subarray(0, n));
  }

  private async fold(x: Float32Array, rows: number, sequences: number, xfp?: Float32Array): Promise<void> {
    const n = this.sequences + sequences;
    const keep = this.sequences / n;
    const add = 2 / n;
    await this.backend.accumulateGram(this.upper, x, rows, this.cols, keep, add);
    this.mirrored = false;
    // a NaN or infinite input makes its column's Σx² on the diagonal one too: only then look for its row
    for (let i = 0; i < this.cols; i++) {
      if (!Number.isFinite(this.upper[i * this.cols + i]!)) throwAtNonFinite(x, this.cols, this.rowsFolded);
    }
    if (this.dXXt) {
      const dx = Float32Array.from(xfp!, (v, i) => v - x[i]!);
      const d = await this.backend.gram(dx, rows, this.cols, x);
      for (let i = 0; i < this.dXXt.length; i++) this.dXXt[i] = this.dXXt[i]! * keep + add * d[i]!;
    }
    this.sequences = n;
    this.rowsFolded += rows;
  }
}

/** h[i, j] = h[j, i] below the diagonal, in tiles so that the strided reads stay in cache */
function mirrorUpper(h: Float64Array, n: number): void {
  const T = 64;
  for (let bi = 0; bi < n; bi += T) {
    for (let bj = 0; bj <= bi; bj += T) {
      for (let i = bi; i < Math.min(bi + T, n); i++) {
        for (let j = bj; j < Math.min(bj + T, i); j++) h[i * n + j] = h[j * n + i]!;
      }
    }
  }
}

function throwAtNonFinite(x: Float32Array, cols: number, firstRow: number): void {
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i]!)) throw new Error(`calibration activations contain NaN/Inf (row ${firstRow + Math.floor(i / cols)})`);
  }
}
