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
  readonly h: Float64Array;
  readonly dXXt?: Float64Array;
  sequences = 0;

  constructor(
    readonly cols: number,
    private backend: Backend,
    asymmetric = false,
  ) {
    this.h = new Float64Array(cols * cols);
    if (asymmetric) this.dXXt = new Float64Array(cols * cols);
  }

  /** x: [rows, cols] activations belonging to `sequences` sequences; xfp: the full-precision model's (asymmetric only) */
  async add(x: Float32Array, rows: number, sequences: number, xfp?: Float32Array): Promise<void> {
    const n = this.sequences + sequences;
    const keep = this.sequences / n;
    const add = 2 / n;
    const g = await this.backend.gram(x, rows, this.cols);
    // a NaN or infinite input makes its column's Σx² on the diagonal one too: only then look for its row
    for (let i = 0; i < this.cols; i++) if (!Number.isFinite(g[i * this.cols + i]!)) throwAtNonFinite(x, this.cols);
    for (let i = 0; i < this.h.length; i++) this.h[i] = this.h[i]! * keep + add * g[i]!;
    if (this.dXXt) {
      if (!xfp) throw new Error('asymmetric calibration needs the full-precision inputs');
      const dx = Float32Array.from(xfp, (v, i) => v - x[i]!);
      const d = await this.backend.gram(dx, rows, this.cols, x);
      for (let i = 0; i < this.dXXt.length; i++) this.dXXt[i] = this.dXXt[i]! * keep + add * d[i]!;
    }
    this.sequences = n;
  }
}

function throwAtNonFinite(x: Float32Array, cols: number): void {
  for (let i = 0; i < x.length; i++) {
    if (!Number.isFinite(x[i]!)) throw new Error(`calibration activations contain NaN/Inf (row ${Math.floor(i / cols)})`);
  }
}
