import type { Backend } from '../tensor/index.js';

/**
 * H = 2/n · Σ x·xᵀ over a layer's calibration inputs, n counting sequences, accumulated batch by batch with
 * the reference's running rescale (H ← H·n/(n+b), then H += 2/(n+b) · XᵀX) so any number of batches
 * streams through in float64 without growing sums.
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

  constructor(
    readonly cols: number,
    private backend: Backend,
    asymmetric = false,
  ) {
    this.upper = new Float64Array(cols * cols);
    if (asymmetric) this.dXXt = new Float64Array(cols * cols);
  }

  get h(): Float64Array {
    if (!this.mirrored) mirrorUpper(this.upper, this.cols);
    this.mirrored = true;
    return this.upper;
  }

  /** x: [rows, cols] activations belonging to `sequences` sequences; xfp: the full-precision model's (asymmetric only) */
  async add(x: Float32Array, rows: number, sequences: number, xfp?: Float32Array): Promise<void> {
    const n = this.sequences + sequences;
    const keep = this.sequences / n;
    const add = 2 / n;
    await this.backend.accumulateGram(this.upper, x, rows, this.cols, keep, add);
    this.mirrored = false;
    // a NaN or infinite input makes its column's Σx² on the diagonal one too: only then look for its row
    for (let i = 0; i < this.cols; i++) if (!Number.isFinite(this.upper[i * this.cols + i]!)) throwAtNonFinite(x, this.cols);
    if (this.dXXt) {
      if (!xfp) throw new Error('asymmetric calibration needs the full-precision inputs');
      const dx = Float32Array.from(xfp, (v, i) => v - x[i]!);
      const d = await this.backend.gram(dx, rows, this.cols, x);
      for (let i = 0; i < this.dXXt.length; i++) this.dXXt[i] = this.dXXt[i]! * keep + add * d[i]!;
    }
    this.sequences = n;
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

function throwAtNonFinite(x: Float32Array, cols: number): void {
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i]!)) throw new Error(`calibration activations contain NaN/Inf (row ${Math.floor(i / cols)})`);
  }
}
