import { SWEEP_COLUMN_WASM } from './sweep-column-wasm.js';

/**
 * The GPTQ sweep's scalar work on a run of columns, in WebAssembly SIMD (scripts/wasm/sweep-column.mjs): rounding
 * a column to its rows' affine grids and the immediate updates of the run's later columns. It computes the same
 * bits as the TypeScript loops of src/quant/gptq.ts (test/wasm.test.ts holds it to them), two rows at a time.
 *
 * A run's columns are copied in, [column, row] float64 as the sweep keeps W; the kernel then updates its own
 * copy, so the caller's columns keep the values they had when loaded. Codes collect in a [rows, block] table
 * that the caller copies out once a block.
 */
export class SweepColumns {
  private readonly memory: WebAssembly.Memory;
  private readonly kernel: {
    quantize(
      x: number,
      rows: number,
      scale: number,
      zero: number,
      maxq: number,
      d: number,
      err: number,
      e32: number,
      codes: number,
      stride: number,
    ): number;
    update(dst: number, src: number, u: number, rows: number): void;
  };
  private readonly at: { x: number; err: number; e32: number; scale: number; zero: number; codes: number };
  private gridNow: object | undefined;

  /** rows must be even; a run holds up to runCols columns, a block's codes up to blockCols */
  constructor(
    readonly rows: number,
    readonly runCols: number,
    readonly blockCols: number,
  ) {
    if (rows % 2) throw new Error(`the SIMD sweep kernel takes an even number of rows, not ${rows}`);
    const f64 = rows * runCols * 8;
    const sizes = { x: f64, err: f64, e32: f64 / 2, scale: rows * 8, zero: rows * 8, codes: rows * blockCols };
    let end = 0;
    const at = {} as Record<keyof typeof sizes, number>;
    for (const [k, bytes] of Object.entries(sizes) as [keyof typeof sizes, number][]) {
      at[k] = end;
      end += Math.ceil(bytes / 16) * 16;
    }
    this.at = at;
    this.memory = new WebAssembly.Memory({ initial: Math.ceil(end / 65536) });
    this.kernel = new WebAssembly.Instance(sweepModule(), { env: { memory: this.memory } }).exports as unknown as SweepColumns['kernel'];
  }

  private f64(offset: number, length: number): Float64Array {
    return new Float64Array(this.memory.buffer, offset, length);
  }

  /** the run's columns, [n, rows] */
  load(columns: Float64Array): void {
    this.f64(this.at.x, columns.length).set(columns);
  }

  /** the rows' grid for the columns quantized next (copied in when it changes) */
  grid(scale: Float64Array, zero: Float64Array): void {
    if (this.gridNow === scale) return;
    this.f64(this.at.scale, this.rows).set(scale);
    this.f64(this.at.zero, this.rows).set(zero);
    this.gridNow = scale;
  }

  /** Rounds the run's column i; its codes go to the block's column b. Returns the column's Σ e²/2. */
  quantize(i: number, d: number, maxq: number, b: number): number {
    const { rows, at } = this;
    const col = i * rows;
    return this.kernel.quantize(
      at.x + col * 8,
      rows,
      at.scale,
      at.zero,
      maxq,
      d,
      at.err + col * 8,
      at.e32 + col * 4,
      at.codes + b,
      this.blockCols,
    );
  }

  /** the run's column j −= (column i's scaled error)·u */
  update(j: number, i: number, u: number): void {
    const { rows, at } = this;
    this.kernel.update(at.x + j * rows * 8, at.err + i * rows * 8, u, rows);
  }

  /** the scaled errors of the run's first n columns, float32 [n, rows] (a view: copy before the next run) */
  errors(n: number): Float32Array {
    return new Float32Array(this.memory.buffer, this.at.e32, n * this.rows);
  }

  /** the block's codes [rows, blockCols], the first `count` columns of each row written (a view) */
  codes(): Uint8Array {
    return new Uint8Array(this.memory.buffer, this.at.codes, this.rows * this.blockCols);
  }
}

let compiled: WebAssembly.Module | undefined;
const sweepModule = (): WebAssembly.Module => (compiled ??= new WebAssembly.Module(Buffer.from(SWEEP_COLUMN_WASM, 'base64')));
