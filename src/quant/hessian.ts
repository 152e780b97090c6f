import type { Backend } from '../tensor/index.js';

/**
 * H = 2/n · Σ x·xᵀ over a layer's calibration inputs, n counting sequences, accumulated batch by batch with
 * the reference's running rescale (H ← H·n/(n+b), then H += 2/(n+b) · XᵀX) so any number of batches
 * streams through in float64 without growing sums.
 */
export class HessianAccumulator {
  readonly h: Float64Array;
  sequences = 0;

  constructor(
    readonly cols: number,
    private backend: Backend,
  ) {
    this.h = new Float64Array(cols * cols);
  }

  /** x: [rows, cols] activations belonging to `sequences` sequences */
  async add(x: Float32Array, rows: number, sequences: number): Promise<void> {
    for (let i = 0; i < x.length; i++) {
      if (!Number.isFinite(x[i]!)) throw new Error(`calibration activations contain NaN/Inf (row ${Math.floor(i / this.cols)})`);
    }
    const g = await this.backend.gram(x, rows, this.cols);
    const n = this.sequences + sequences;
    const keep = this.sequences / n;
    const add = 2 / n;
    for (let i = 0; i < this.h.length; i++) this.h[i] = this.h[i]! * keep + add * g[i]!;
    this.sequences = n;
  }
}
