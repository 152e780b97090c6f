import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import {
  kvOffset,
  type ActivationPrecision,
  type AttentionShape,
  type Backend,
  type HeadStats,
  type LinearKernel,
  type LinearOptions,
  type PackedLinearWeights,
  type ResidualMlpKernel,
  type ResidualMlpWeights,
} from './backend.js';
import { ElemType, encodeModel, float32Bytes, type ElemTypeId, type Initializer, type NodeSpec, type ValueInfo } from './onnx-graph.js';
import { forVocabSlices, logAddExp } from './rows.js';
import { initializerBytes, nativeLayout, packedLinearGraph } from './ort-linear.js';
import { nativeDecodeAttention, nativeHalfKv, nativeKernel, nativeLinear, nativeRmsNorm } from './native.js';
import { refBackend, residualMlpSteps } from './ref.js';
import { attentionJs } from './attention-js.js';

/**
 * The kernels as small ONNX graphs run by onnxruntime's CPU engine (MLAS gemm, all cores). Each graph has
 * symbolic dimensions, so one session per kernel serves every shape.
 */

const F = ElemType.FLOAT;

// onnxruntime's telemetry reads the machine id at its first session and leaves an empty /tmp/mat-debug-<pid>.log
// behind every process (thousands over a test suite); read before that first session, so set here
process.env['ORT_DISABLE_TELEMETRY'] ??= '1';

const sessionOptions = (threads = availableParallelism()): ort.InferenceSession.SessionOptions => ({
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
  graphOptimizationLevel: 'all',
  // each session's arena would keep its largest buffers for good (a 14336² float64 product is 1.6 GB): freed to
  // malloc instead, they serve the next session's. Quantizing a Llama-3-8B-shaped block: peak RSS 11.2 GB and
  // 4.3 GB between blocks, against 15.3 GB and growing with the arenas; gemm times unchanged
  enableCpuMemArena: false,
  // every session has its own thread pool; spinning pools of idle sessions would starve the running one
  extra: { session: { intra_op: { allow_spinning: '0' } } },
});

/**
 * Prepared layers with fewer weight bytes than this run on one thread: waking a sleeping worker costs more
 * than it saves on a batch-1 matvec this small (measured: a 4-bit 4096x768 matvec 107 µs on one thread,
 * 144 µs on two; 2048x2048 149 µs vs 108 µs).
 */
const SERIAL_BELOW_BYTES = 2 * 2 ** 20;

function graph(
  nodes: NodeSpec[],
  inputs: ValueInfo[],
  outputs: ValueInfo[],
  threads?: number,
  initializers: Initializer[] = [],
): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(encodeModel(nodes, inputs, outputs, initializers), sessionOptions(threads));
}

/**
 * C = A·Bᵀ (B stored [n, k]) or A·B (B stored [k, n]), float32 or float64; with transA, A is stored [k, m]. With
 * `addend`, C = addend + the product: MLAS copies the addend into C and accumulates the product onto it, where
 * TypeScript added the product after it. Llama-2-7B's o_proj with its residual update over 2048 positions: 242 →
 * 222 ms (`npm run bench:forward`).
 */
const gemmGraph =
  (elemType: typeof F | typeof ElemType.DOUBLE, transB: 0 | 1, transA: 0 | 1 = 0, addend = false) =>
  (): Promise<ort.InferenceSession> =>
    graph(
      [{ opType: 'Gemm', inputs: addend ? ['A', 'B', 'addend'] : ['A', 'B'], outputs: ['C'], intAttrs: { transA, transB } }],
      [
        { name: 'A', elemType, dims: transA ? ['k', 'm'] : ['m', 'k'] },
        { name: 'B', elemType, dims: transB ? ['n', 'k'] : ['k', 'n'] },
        ...(addend ? [{ name: 'addend', elemType, dims: ['m', 'n'] }] : []),
      ],
      [{ name: 'C', elemType, dims: ['m', 'n'] }],
    );

/** y = x / sqrt(mean(x²) + eps) · w over the last axis, as nodes (the norm's graph, and the fused block tail's) */
const rmsNormNodes = (x: string, w: string, eps: string, y: string): NodeSpec[] => [
  { opType: 'Mul', inputs: [x, x], outputs: [`${y}_sq`] },
  { opType: 'ReduceMean', inputs: [`${y}_sq`], outputs: [`${y}_ms`], intsAttrs: { axes: [-1] }, intAttrs: { keepdims: 1 } },
  { opType: 'Add', inputs: [`${y}_ms`, eps], outputs: [`${y}_var`] },
  { opType: 'Sqrt', inputs: [`${y}_var`], outputs: [`${y}_rms`] },
  { opType: 'Div', inputs: [x, `${y}_rms`], outputs: [`${y}_n`] },
  { opType: 'Mul', inputs: [`${y}_n`, w], outputs: [y] },
];

const rmsNormGraph = (): Promise<ort.InferenceSession> =>
  graph(
    rmsNormNodes('x', 'w', 'eps', 'y'),
    [
      { name: 'x', elemType: F, dims: ['m', 'd'] },
      { name: 'w', elemType: F, dims: ['d'] },
      { name: 'eps', elemType: F, dims: [] },
    ],
    [{ name: 'y', elemType: F, dims: ['m', 'd'] }],
  );

const swigluGraph = (): Promise<ort.InferenceSession> =>
  graph(
    [
      { opType: 'Gemm', inputs: ['h', 'wg'], outputs: ['g'], intAttrs: { transB: 1 } },
      { opType: 'Gemm', inputs: ['h', 'wu'], outputs: ['u'], intAttrs: { transB: 1 } },
      { opType: 'Sigmoid', inputs: ['g'], outputs: ['sg'] },
      { opType: 'Mul', inputs: ['g', 'sg'], outputs: ['silu'] },
      { opType: 'Mul', inputs: ['silu', 'u'], outputs: ['a'] },
    ],
    [
      { name: 'h', elemType: F, dims: ['m', 'k'] },
      { name: 'wg', elemType: F, dims: ['n', 'k'] },
      { name: 'wu', elemType: F, dims: ['n', 'k'] },
    ],
    [{ name: 'a', elemType: F, dims: ['m', 'n'] }],
  );

const gramGraph = (): Promise<ort.InferenceSession> =>
  graph(
    [{ opType: 'Gemm', inputs: ['X', 'Y'], outputs: ['G'], intAttrs: { transA: 1 } }],
    [
      { name: 'X', elemType: F, dims: ['rows', 'cols'] },
      { name: 'Y', elemType: F, dims: ['rows', 'cols'] },
    ],
    [{ name: 'G', elemType: F, dims: ['cols', 'cols'] }],
  );

/**
 * The Hessian's XᵀX: the columns split into panels and only the panel products on and above the diagonal
 * computed (36 of 64 gemms at 8 panels, as a syrk would), each its own output, so that only they are accumulated
 * into the float64 Hessian. At Llama-2-7B's shapes (2048 rows, 4096 and 11008 columns) gemms plus accumulation
 * ran at 182-234 GFLOP/s of the full product's flop against 54-149 for 4 panels whose transposes were
 * concatenated into the whole matrix and all of it accumulated. Panel widths are multiples of 16 (the last takes
 * the rest); one graph per column count, since the widths are the graph's constants.
 *
 * Wide inputs get panels of about PANEL_WIDTH columns rather than 8 (16 at 11008, 21 at 14336): the products on
 * the diagonal, half of whose flop is thrown away, shrink from 1/16 to about 1/32 of XᵀX. And X is transposed
 * once inside the graph, so that each product is Xᵢ·Xⱼᵀ: MLAS ran A·Bᵀ at 155-167 GFLOP/s against 138-144 for
 * Aᵀ·B on 512-2752-wide panels of 2048 rows (a transposition in TypeScript, 120 ms at 2048 x 11008, cost about
 * what it saved). `npm run bench:sweep -- --baseline` before both, two runs: 2048 x 11008 1.19x and 1.09x as fast,
 * 2048 x 4096 (still 8 panels) 1.05x and 1.07x.
 */
const GRAM_PANELS = 8;
/** below this many columns the panels are too thin for the saving to beat the extra nodes */
const PANELS_FROM = 512;
/**
 * the wide inputs' panel width: 16 panels at 11008 with the in-graph transpose ran 1.09-1.19x as fast as 8 without it
 * (the transpose alone, at 8 panels: 1.04x in one run); 24 panels (460 wide) measured 1.14x in one run
 */
const PANEL_WIDTH = 688;

function gramPanels(cols: number): number[] {
  if (cols < PANELS_FROM) return [cols];
  const count = Math.max(GRAM_PANELS, Math.round(cols / PANEL_WIDTH));
  const base = Math.floor(cols / count / 16) * 16;
  return Array.from({ length: count }, (_, i) => (i < count - 1 ? base : cols - base * (count - 1)));
}

const upperGramGraph = (widths: number[]): Promise<ort.InferenceSession> => {
  const cols = widths.reduce((a, b) => a + b, 0);
  const panel = (i: number) => (widths.length === 1 ? 'XT' : `X${i}`);
  const nodes: NodeSpec[] = [{ opType: 'Transpose', inputs: ['X'], outputs: ['XT'], intsAttrs: { perm: [1, 0] } }];
  const outputs: ValueInfo[] = [];
  const initializers: Initializer[] = [];
  if (widths.length > 1) {
    nodes.push({ opType: 'Split', inputs: ['XT', 'widths'], outputs: widths.map((_, i) => panel(i)), intAttrs: { axis: 0 } });
    const data = new Uint8Array(new BigInt64Array(widths.map(BigInt)).buffer);
    initializers.push({ name: 'widths', elemType: ElemType.INT64, dims: [widths.length], data });
  }
  for (let i = 0; i < widths.length; i++) {
    for (let j = i; j < widths.length; j++) {
      nodes.push({ opType: 'Gemm', inputs: [panel(i), panel(j)], outputs: [`G${i}_${j}`], intAttrs: { transB: 1 } });
      outputs.push({ name: `G${i}_${j}`, elemType: F, dims: [widths[i]!, widths[j]!] });
    }
  }
  return graph(nodes, [{ name: 'X', elemType: F, dims: ['rows', cols] }], outputs, undefined, initializers);
};

const upperGramSessions = new Map<number, Promise<ort.InferenceSession>>();

/**
 * Causal attention with grouped kv heads and no copies of them: q arrives as [b, t, kvHeads, group, d] (the same
 * memory as [b, t, heads, d], query head h = kv head ⌊h/group⌋), k and v as [b, s, kvHeads, 1, d], whose size-1
 * axis the MatMuls broadcast over the group (expanding each kv head group times instead cost a copy of the whole
 * cache per layer per token: at TinyLlama's 8 query heads a kv head, 8 ms of a 49 ms token). The 1/√d scale
 * multiplies q, not the scores: a pass over t·d values a head instead of t·ctx.
 */
const attentionGraph = (threads?: number) => (): Promise<ort.InferenceSession> =>
  graph(
    [
      { opType: 'Mul', inputs: ['q', 'scale'], outputs: ['qs'] },
      { opType: 'Transpose', inputs: ['qs'], outputs: ['qt'], intsAttrs: { perm: [0, 2, 3, 1, 4] } },
      { opType: 'Transpose', inputs: ['k'], outputs: ['kt'], intsAttrs: { perm: [0, 2, 3, 4, 1] } },
      { opType: 'Transpose', inputs: ['v'], outputs: ['vt'], intsAttrs: { perm: [0, 2, 3, 1, 4] } },
      { opType: 'MatMul', inputs: ['qt', 'kt'], outputs: ['s'] },
      { opType: 'Add', inputs: ['s', 'mask'], outputs: ['sm'] },
      { opType: 'Softmax', inputs: ['sm'], outputs: ['p'], intAttrs: { axis: -1 } },
      { opType: 'MatMul', inputs: ['p', 'vt'], outputs: ['o'] },
      { opType: 'Transpose', inputs: ['o'], outputs: ['out'], intsAttrs: { perm: [0, 3, 1, 2, 4] } },
    ],
    [
      { name: 'q', elemType: F, dims: ['b', 't', 'h', 'g', 'd'] },
      { name: 'k', elemType: F, dims: ['b', 's', 'h', 1, 'd'] },
      { name: 'v', elemType: F, dims: ['b', 's', 'h', 1, 'd'] },
      { name: 'scale', elemType: F, dims: [] },
      { name: 'mask', elemType: F, dims: ['t', 's'] },
    ],
    [{ name: 'out', elemType: F, dims: ['b', 't', 'h', 'g', 'd'] }],
    threads,
  );

/**
 * A decode step over a head-major KV cache (AttentionShape.kvCapacity): k and v come as [b, kvHeads, 1, capacity, d],
 * each head's keys one matrix, so the scores are K·q (as [capacity, 1] per query head, whose transpose to [1,
 * capacity] moves only a size-1 axis) and the output p·V, with no transpose of the cache. Positions from ctx to the
 * capacity are masked (their rows are zeros: p = 0 exactly). Llama-2-7B's 32 heads of 128, `npm run bench:kernels`
 * (median of 9 calls, two runs): 1.8-2.2 ms over 1024 positions against 5.9-6.0 for the position-major graph,
 * 3.0-3.3 against 11.3-13.3 over 2048, 0.09 against 0.21 over 40.
 */
const decodeAttentionGraph = (threads?: number) => (): Promise<ort.InferenceSession> =>
  graph(
    [
      { opType: 'Mul', inputs: ['q', 'scale'], outputs: ['qs'] },
      { opType: 'Transpose', inputs: ['qs'], outputs: ['qt'], intsAttrs: { perm: [0, 2, 3, 4, 1] } },
      { opType: 'MatMul', inputs: ['k', 'qt'], outputs: ['st'] },
      { opType: 'Transpose', inputs: ['st'], outputs: ['s'], intsAttrs: { perm: [0, 1, 2, 4, 3] } },
      { opType: 'Add', inputs: ['s', 'mask'], outputs: ['sm'] },
      { opType: 'Softmax', inputs: ['sm'], outputs: ['p'], intAttrs: { axis: -1 } },
      { opType: 'MatMul', inputs: ['p', 'v'], outputs: ['o'] },
      { opType: 'Transpose', inputs: ['o'], outputs: ['out'], intsAttrs: { perm: [0, 3, 1, 2, 4] } },
    ],
    [
      { name: 'q', elemType: F, dims: ['b', 1, 'h', 'g', 'd'] },
      { name: 'k', elemType: F, dims: ['b', 'h', 1, 'c', 'd'] },
      { name: 'v', elemType: F, dims: ['b', 'h', 1, 'c', 'd'] },
      { name: 'scale', elemType: F, dims: [] },
      { name: 'mask', elemType: F, dims: [1, 'c'] },
    ],
    [{ name: 'out', elemType: F, dims: ['b', 1, 'h', 'g', 'd'] }],
    threads,
  );

/**
 * One vocabulary slice of the head's statistics: per row, its logits' maximum and log-sum-exp and, against a
 * reference's slice, the reference's maximum and log-sum-exp, Σ e^{z_ref − max_ref}·(z_ref − z) and both argmaxes;
 * headStats joins the slices (see there). Sums run in float64 (ReduceLogSumExp's float32 one missed stories15M's
 * 32000-way log-sum-exp by 5e-4; a float32 ReduceSum by 3e-5; in float64 5e-7).
 */
const DOUBLE = ElemType.DOUBLE;
const sliceLogits = (h: string, w: string, z: string): NodeSpec => ({
  opType: 'Gemm',
  inputs: [h, w],
  outputs: [z],
  intAttrs: { transB: 1 },
});
const rowSum64 = (x: string, out: string): NodeSpec[] => [
  { opType: 'Cast', inputs: [x], outputs: [`${x}64`], intAttrs: { to: DOUBLE } },
  { opType: 'ReduceSum', inputs: [`${x}64`, 'axes'], outputs: [out], intAttrs: { keepdims: 0 } },
];
/** max, e = exp(z − max), and lse = max + log Σ e (float64) of each row of z */
const logSumExp = (z: string): NodeSpec[] => [
  { opType: 'ReduceMax', inputs: [z], outputs: [`${z}_max`], intsAttrs: { axes: [1] }, intAttrs: { keepdims: 1 } },
  { opType: 'Sub', inputs: [z, `${z}_max`], outputs: [`${z}_shift`] },
  { opType: 'Exp', inputs: [`${z}_shift`], outputs: [`${z}_e`] },
  ...rowSum64(`${z}_e`, `${z}_sum`),
  { opType: 'Log', inputs: [`${z}_sum`], outputs: [`${z}_log`] },
  { opType: 'Squeeze', inputs: [`${z}_max`, 'axes'], outputs: [`${z}_m`] },
  { opType: 'Cast', inputs: [`${z}_m`], outputs: [`${z}_m64`], intAttrs: { to: DOUBLE } },
  { opType: 'Add', inputs: [`${z}_log`, `${z}_m64`], outputs: [`${z}_lse`] },
];
const rowVector = (name: string, elemType: ElemTypeId = DOUBLE): ValueInfo => ({ name, elemType, dims: ['m'] });
const sliceInputs = (h: string, w: string): ValueInfo[] => [
  { name: h, elemType: F, dims: ['m', 'd'] },
  { name: w, elemType: F, dims: ['n', 'd'] },
];
const axesInput: ValueInfo = { name: 'axes', elemType: ElemType.INT64, dims: [1] };

const headSliceGraph = (): Promise<ort.InferenceSession> =>
  graph([sliceLogits('h', 'w', 'z'), ...logSumExp('z')], [...sliceInputs('h', 'w'), axesInput], [rowVector('z_lse')]);

const compareSliceGraph = (): Promise<ort.InferenceSession> =>
  graph(
    [
      sliceLogits('h', 'w', 'z'),
      sliceLogits('hr', 'wr', 'zr'),
      ...logSumExp('z'),
      ...logSumExp('zr'),
      { opType: 'Sub', inputs: ['zr', 'z'], outputs: ['diff'] },
      { opType: 'Mul', inputs: ['zr_e', 'diff'], outputs: ['terms'] },
      ...rowSum64('terms', 'gap'),
      { opType: 'ArgMax', inputs: ['z'], outputs: ['top'], intAttrs: { axis: 1, keepdims: 0 } },
      { opType: 'ArgMax', inputs: ['zr'], outputs: ['topr'], intAttrs: { axis: 1, keepdims: 0 } },
    ],
    [...sliceInputs('h', 'w'), ...sliceInputs('hr', 'wr'), axesInput],
    [
      rowVector('z_lse'),
      rowVector('zr_lse'),
      rowVector('gap'),
      rowVector('z_m', F),
      rowVector('zr_m', F),
      rowVector('top', ElemType.INT64),
      rowVector('topr', ElemType.INT64),
    ],
  );

/** Lazily created, then reused: session creation costs milliseconds, a run tens of microseconds. */
function lazy(make: () => Promise<ort.InferenceSession>): () => Promise<ort.InferenceSession> {
  let s: Promise<ort.InferenceSession> | undefined;
  return () => (s ??= make());
}

const sessions = {
  matmul: lazy(gemmGraph(F, 1)),
  matmulNN: lazy(gemmGraph(F, 0)),
  matmulAdd: lazy(gemmGraph(F, 1, 0, true)),
  matmul64: [
    [lazy(gemmGraph(ElemType.DOUBLE, 0)), lazy(gemmGraph(ElemType.DOUBLE, 1))],
    [lazy(gemmGraph(ElemType.DOUBLE, 0, 1)), lazy(gemmGraph(ElemType.DOUBLE, 1, 1))],
  ],
  gram: lazy(gramGraph),
  rmsNorm: lazy(rmsNormGraph),
  swiglu: lazy(swigluGraph),
  attention: lazy(attentionGraph()),
  attentionSerial: lazy(attentionGraph(1)),
  decodeAttention: lazy(decodeAttentionGraph()),
  decodeAttentionSerial: lazy(decodeAttentionGraph(1)),
  headSlice: lazy(headSliceGraph),
  compareSlice: lazy(compareSliceGraph),
};

const masks = new Map<string, ort.Tensor>();
/** A mask tensor made once per shape and reused (at most 64 kept: a generation makes one per step) */
function cachedMask(key: string, rows: number, cols: number, fill: (m: Float32Array) => void): ort.Tensor {
  let t = masks.get(key);
  if (!t) {
    const m = new Float32Array(rows * cols);
    fill(m);
    t = new ort.Tensor('float32', m, [rows, cols]);
    if (masks.size > 64) masks.clear();
    masks.set(key, t);
  }
  return t;
}

/** Query i (at position ctx - seq + i) sees keys first(i)..its own position: all, or the last `window`. */
function causalMask(seq: number, ctx: number, window = Infinity): ort.Tensor {
  return cachedMask(`${seq}x${ctx}x${window}`, seq, ctx, (m) => {
    for (let i = 0; i < seq; i++) {
      const last = ctx - seq + i;
      for (let j = 0; j < ctx; j++) if (j > last || last - j >= window) m[i * ctx + j] = -Infinity;
    }
  });
}

/** A decode step's mask over a head-major cache of `capacity` rows: keys 0..ctx-1 (the last `window` of them). */
function decodeMask(ctx: number, capacity: number, window = Infinity): ort.Tensor {
  return cachedMask(`decode ${ctx}x${capacity}x${window}`, 1, capacity, (m) => {
    m.fill(-Infinity);
    m.fill(0, Math.max(0, ctx - window), ctx);
  });
}

/** A head-major cache's first ctx positions, position-major [1, ctx, kvHeads, d] (for the query-block graph). */
function positionMajor(x: Float32Array, sh: AttentionShape): Float32Array {
  const { ctx, kvHeads, headDim: d } = sh;
  const out = new Float32Array(ctx * kvHeads * d);
  for (let h = 0; h < kvHeads; h++)
    for (let j = 0; j < ctx; j++) out.set(x.subarray(kvOffset(sh, 0, j, h), kvOffset(sh, 0, j, h) + d), (j * kvHeads + h) * d);
  return out;
}

const f32 = (data: Float32Array, dims: number[]): ort.Tensor => new ort.Tensor('float32', data, dims);

/**
 * A linear layer's graph, encoded: input x [m, cols] → y [m, rows] (or, gated, its activation [m, rows/2]),
 * weights baked in as initializers.
 */
export interface EncodedLinear {
  model: Uint8Array;
  rows: number;
  cols: number;
  weightBytes: number;
  gated?: 'silu';
}

/** The layer's product renamed z, then y = silu(z[:, :rows/2]) ⊙ z[:, rows/2:] as the swiglu graph forms it. */
function gatedEpilogue(nodes: NodeSpec[]): NodeSpec[] {
  return [
    ...nodes.map((n) => ({ ...n, outputs: n.outputs.map((o) => (o === 'y' ? 'z' : o)) })),
    { opType: 'Split', inputs: ['z'], outputs: ['zg', 'zu'], intAttrs: { axis: 1 } },
    { opType: 'Sigmoid', inputs: ['zg'], outputs: ['sg'] },
    { opType: 'Mul', inputs: ['zg', 'sg'], outputs: ['silu'] },
    { opType: 'Mul', inputs: ['silu', 'zu'], outputs: ['y'] },
  ];
}

function encodeLinear(nodes: NodeSpec[], inits: Initializer[], rows: number, cols: number, opts: LinearOptions = {}): EncodedLinear {
  const model = encodeModel(
    opts.gated ? gatedEpilogue(nodes) : nodes,
    [{ name: 'x', elemType: F, dims: ['m', cols] }],
    [{ name: 'y', elemType: F, dims: ['m', opts.gated ? rows / 2 : rows] }],
    inits,
  );
  return { model, rows, cols, weightBytes: initializerBytes(inits), ...(opts.gated ? { gated: opts.gated } : {}) };
}

export function encodeFloatLinear(w: Float32Array, rows: number, cols: number, opts?: LinearOptions): EncodedLinear {
  return encodeLinear(
    [{ opType: 'Gemm', inputs: ['x', 'W'], outputs: ['y'], intAttrs: { transB: 1 } }],
    [{ name: 'W', elemType: F, dims: [rows, cols], data: float32Bytes(w) }],
    rows,
    cols,
    opts,
  );
}

/** The MatMulNBits graph of a packed layer, or undefined when its groups do not fit MatMulNBits blocks. */
export function encodePackedLinear(
  p: PackedLinearWeights,
  activations: ActivationPrecision,
  opts?: LinearOptions,
): EncodedLinear | undefined {
  const g = packedLinearGraph(p, activations);
  return g && encodeLinear(g.nodes, g.inits, p.rows, p.cols, opts);
}

/** A session of an encoded layer; onnxruntime packs the weights into its own layout once, here. */
export async function openLinear(e: EncodedLinear): Promise<LinearKernel> {
  const s = await ort.InferenceSession.create(e.model, sessionOptions(e.weightBytes < SERIAL_BELOW_BYTES ? 1 : undefined));
  const { rows, cols, weightBytes } = e;
  return {
    rows,
    cols,
    weightBytes,
    ...(e.gated ? { gated: e.gated } : {}),
    async apply(x, m) {
      const r = await s.run({ x: f32(x, [m, cols]) });
      return r['y']!.data as Float32Array;
    },
    dispose: () => s.release(),
  };
}

/** A layer's graph (input x, output y) wired to `io`'s names, its other names under a prefix. */
function renamed(
  g: { nodes: NodeSpec[]; inits: Initializer[] },
  prefix: string,
  io: { x: string; y: string },
): { nodes: NodeSpec[]; inits: Initializer[] } {
  const name = (n: string): string => (n === 'x' ? io.x : n === 'y' ? io.y : `${prefix}${n}`);
  return {
    nodes: g.nodes.map((n) => ({ ...n, inputs: n.inputs.map(name), outputs: n.outputs.map(name) })),
    inits: g.inits.map((t) => ({ ...t, name: name(t.name) })),
  };
}

/**
 * Backend.packedResidualMlp: o_proj, the residual add, the norm, the gated gate/up and down_proj with its residual
 * add as one graph, so a block's tail is one session run. TinyLlama's shape, 22 such tails of random 4-bit layers
 * with int8 activations: 15.2-16.0 ms a pass as one graph per block against 17.7-21.0 as three sessions and
 * JavaScript between them (the experiment in the README's Scale section).
 */
async function openResidualMlp(w: ResidualMlpWeights, activations: ActivationPrecision): Promise<ResidualMlpKernel | undefined> {
  // on the native kernel the tail is its steps: a batch-1 norm and adds cost microseconds in TypeScript
  if (activations === 'int8' && nativeKernel() && [w.o, w.gateUp, w.down].every((p) => nativeLayout(p)))
    return residualMlpSteps(ortBackend, w, activations);
  const [o, gateUp, down] = [w.o, w.gateUp, w.down].map((p) => packedLinearGraph(p, activations));
  if (!o || !gateUp || !down) return undefined;
  const D = w.norm.length;
  const parts = [
    renamed(o, 'o_', { x: 'att', y: 'ao' }),
    renamed({ nodes: gatedEpilogue(gateUp.nodes), inits: gateUp.inits }, 'gu_', { x: 'h', y: 'act' }),
    renamed(down, 'd_', { x: 'act', y: 'dy' }),
  ];
  const nodes: NodeSpec[] = [
    ...parts[0]!.nodes,
    { opType: 'Add', inputs: ['x', 'ao'], outputs: ['x1'] },
    ...rmsNormNodes('x1', 'norm', 'eps', 'h'),
    ...parts[1]!.nodes,
    ...parts[2]!.nodes,
    { opType: 'Add', inputs: ['x1', 'dy'], outputs: ['y'] },
  ];
  const inits = [
    ...parts.flatMap((p) => p.inits),
    { name: 'norm', elemType: F, dims: [D], data: float32Bytes(w.norm) },
    { name: 'eps', elemType: F, dims: [], data: float32Bytes(new Float32Array([w.eps])) },
  ];
  const weightBytes = initializerBytes(inits);
  const cols = w.o.cols;
  const model = encodeModel(
    nodes,
    [
      { name: 'x', elemType: F, dims: ['m', D] },
      { name: 'att', elemType: F, dims: ['m', cols] },
    ],
    [{ name: 'y', elemType: F, dims: ['m', D] }],
    inits,
  );
  const s = await ort.InferenceSession.create(model, sessionOptions());
  return {
    weightBytes,
    async apply(x, att, m) {
      return (await s.run({ x: f32(x, [m, D]), att: f32(att, [m, cols]) }))['y']!.data as Float32Array;
    },
    dispose: () => s.release(),
  };
}

let warnedLayout = false;

/**
 * Below these sizes a kernel runs in TypeScript: a session run costs 15–20 µs of fixed overhead (a one-node graph on
 * 2048 floats), and each node of it more, against single-token RMSNorm's few µs in JS. For attention (one query, with the grouped graph) onnxruntime wins from a
 * few cached positions: 12 heads of 64 at ctx 16 JS 76 µs, onnxruntime 113; at ctx 32 93 vs 60; 32 heads of 64
 * (4 kv heads) at ctx 16 131 vs 93, ctx 64 485 vs 90.
 */
const SMALL_NORM = 1 << 18;
const SMALL_ATTENTION = 1 << 14;
/**
 * ...and on one thread below this size: waking the second thread costs more than it saves (32 heads of 64 at
 * ctx 64: 58 µs on one thread, 90 on two; 32 heads of 128 at ctx 32 143 vs 193, at ctx 64 292 vs 275).
 */
const SERIAL_ATTENTION = 1 << 18;
/**
 * Longer query runs are attended QUERY_BLOCK positions at a time, each block over the keys up to its last
 * position: the scores the causal mask would discard past the block are never computed, and one block's scores
 * (heads x 256 x ctx) stay small. One 2048-token window at Llama-2-7B's 32 heads of 128, best of 3: 405 ms in
 * blocks of 256 against 617 whole (1,668 in another run); 128 and 256 were within noise of each other, 512 478 ms.
 */
const QUERY_BLOCK = 256;

/** ortBackend.attention per sequence and block of queries: positions [t0, t1) of the last seq of ctx see keys [0, ctx − seq + t1) */
async function attentionInQueryBlocks(q: Float32Array, k: Float32Array, v: Float32Array, sh: AttentionShape): Promise<Float32Array> {
  const { batch, seq, ctx, heads, kvHeads, headDim } = sh;
  const [qPer, kvPer] = [heads * headDim, kvHeads * headDim];
  const past = ctx - seq;
  const out = new Float32Array(q.length);
  for (let b = 0; b < batch; b++) {
    const [q0, kv0] = [b * seq, b * ctx];
    for (let t0 = 0; t0 < seq; t0 += QUERY_BLOCK) {
      const t1 = Math.min(t0 + QUERY_BLOCK, seq);
      const keys = [kv0 * kvPer, (kv0 + past + t1) * kvPer] as const;
      const o = await ortBackend.attention(q.subarray((q0 + t0) * qPer, (q0 + t1) * qPer), k.subarray(...keys), v.subarray(...keys), {
        ...sh,
        batch: 1,
        seq: t1 - t0,
        ctx: past + t1,
      });
      out.set(o, (q0 + t0) * qPer);
    }
  }
  return out;
}

export const ortBackend: Backend = {
  name: 'onnxruntime',

  floatLinear: (w, rows, cols, opts) => openLinear(encodeFloatLinear(w, rows, cols, opts)),

  packedLinear(p, activations, opts) {
    const native = activations === 'int8' ? nativeLinear(p, opts) : undefined;
    if (native) return Promise.resolve(native);
    const e = encodePackedLinear(p, activations, opts);
    if (e) return openLinear(e);
    if (!warnedLayout) {
      warnedLayout = true;
      process.emitWarning('a layer has groups that do not start on multiples of 16 columns; it runs on the slow plain-TS kernel');
    }
    return refBackend.packedLinear(p, activations, opts);
  },

  packedResidualMlp: openResidualMlp,

  async matmulNT(a, b, m, n, k, addend) {
    const feeds = { A: f32(a, [m, k]), B: f32(b, [n, k]) };
    const r = addend
      ? await (await sessions.matmulAdd()).run({ ...feeds, addend: f32(addend, [m, n]) })
      : await (await sessions.matmul()).run(feeds);
    return r['C']!.data as Float32Array;
  },

  async matmulNN(a, b, m, n, k) {
    const r = await (await sessions.matmulNN()).run({ A: f32(a, [m, k]), B: f32(b, [k, n]) });
    return r['C']!.data as Float32Array;
  },

  async matmul64(a, b, m, n, k, transB, more) {
    const transA = more?.transA ?? false;
    const s = await sessions.matmul64[+transA]![+transB]!();
    const feeds = {
      A: new ort.Tensor('float64', a, transA ? [k, m] : [m, k]),
      B: new ort.Tensor('float64', b, transB ? [n, k] : [k, n]),
    };
    // onnxruntime writes a pre-allocated output in place, a view into a larger matrix included
    if (more?.out) await s.run(feeds, { C: new ort.Tensor('float64', more.out, [m, n]) });
    return more?.out ?? ((await s.run(feeds))['C']!.data as Float64Array);
  },

  async rmsNorm(x, w, rows, eps) {
    if (x.length <= SMALL_NORM) return nativeRmsNorm(x, w, rows, eps) ?? refBackend.rmsNorm(x, w, rows, eps);
    const r = await (
      await sessions.rmsNorm()
    ).run({ x: f32(x, [rows, w.length]), w: f32(w, [w.length]), eps: f32(new Float32Array([eps]), []) });
    return r['y']!.data as Float32Array;
  },

  async swiglu(h, wg, wu, m, n, k) {
    const r = await (await sessions.swiglu()).run({ h: f32(h, [m, k]), wg: f32(wg, [n, k]), wu: f32(wu, [n, k]) });
    return r['a']!.data as Float32Array;
  },

  async gram(x, rows, cols, y = x) {
    const r = await (await sessions.gram()).run({ X: f32(x, [rows, cols]), Y: f32(y, [rows, cols]) });
    return r['G']!.data as Float32Array;
  },

  async accumulateGram(h, x, rows, cols, keep, add) {
    const widths = gramPanels(cols);
    let session = upperGramSessions.get(cols);
    if (!session) upperGramSessions.set(cols, (session = upperGramGraph(widths)));
    const r = await (await session).run({ X: f32(x, [rows, cols]) });
    for (let i = 0, si = 0; i < widths.length; si += widths[i++]!) {
      for (let j = i, sj = si; j < widths.length; sj += widths[j++]!) {
        const g = r[`G${i}_${j}`]!.data as Float32Array;
        const [wi, wj] = [widths[i]!, widths[j]!];
        for (let a = 0; a < wi; a++) {
          const o = (si + a) * cols + sj;
          for (let c = i === j ? a : 0, ga = a * wj; c < wj; c++) h[o + c] = h[o + c]! * keep + add * g[ga + c]!;
        }
      }
    }
  },

  halfKvCache: nativeHalfKv,

  async attention(q, k, v, sh: AttentionShape) {
    const { batch, seq, ctx, heads, kvHeads, headDim } = sh;
    // the graph has no soft-capping or per-head biases: Gemma 2's and BLOOM's scores take the TS kernel
    const size = batch * seq * ctx * heads * headDim;
    const plain = !sh.softcap && !sh.alibi && size > SMALL_ATTENTION;
    const group = heads / kvHeads;
    if (sh.kvCapacity && seq === 1) {
      const native = nativeDecodeAttention(q, k, v, sh);
      if (native) return native;
      if (!plain) return attentionJs(q, k, v, sh);
      const cap = sh.kvCapacity;
      const s = await (size < SERIAL_ATTENTION ? sessions.decodeAttentionSerial : sessions.decodeAttention)();
      const r = await s.run({
        q: f32(q, [1, 1, kvHeads, group, headDim]),
        k: f32(k, [1, kvHeads, 1, cap, headDim]),
        v: f32(v, [1, kvHeads, 1, cap, headDim]),
        scale: f32(new Float32Array([1 / Math.sqrt(headDim)]), []),
        mask: decodeMask(ctx, cap, sh.window),
      });
      return r['out']!.data as Float32Array;
    }
    // several new positions over a cache (a prompt continued): the position-major kernels, on a copy
    if (sh.kvCapacity) {
      const pm: AttentionShape = { ...sh };
      delete pm.kvCapacity;
      return ortBackend.attention(q, positionMajor(k, sh), positionMajor(v, sh), pm);
    }
    if (seq > QUERY_BLOCK) return attentionInQueryBlocks(q, k, v, sh);
    if (!plain) return attentionJs(q, k, v, sh);
    const s = await (size < SERIAL_ATTENTION ? sessions.attentionSerial : sessions.attention)();
    const r = await s.run({
      q: f32(q, [batch, seq, kvHeads, group, headDim]),
      k: f32(k, [batch, ctx, kvHeads, 1, headDim]),
      v: f32(v, [batch, ctx, kvHeads, 1, headDim]),
      scale: f32(new Float32Array([1 / Math.sqrt(headDim)]), []),
      mask: causalMask(seq, ctx, sh.window),
    });
    return r['out']!.data as Float32Array;
  },

  /**
   * Slice by slice (forVocabSlices), per row: LSE = log Σ_s e^{lse_s}; the target's logit is its row's dot product
   * with h (float64); KL(ref || this) = Σ_v p_ref(v)·(z_ref − z)_v − LSE_ref + LSE, the sum being
   * Σ_s e^{max_ref,s − LSE_ref}·gap_s; argmax is the first slice's whose maximum no later slice exceeds.
   */
  async headStats(h, w, m, d, vocab, targets, opts = {}): Promise<HeadStats> {
    const { ref } = opts;
    const lse = new Float64Array(m).fill(-Infinity);
    const target = new Float64Array(m);
    const lser = new Float64Array(m).fill(-Infinity);
    const shifted: { maxr: Float32Array; gap: Float64Array }[] = [];
    const best = new Float64Array(m).fill(-Infinity);
    const bestr = new Float64Array(m).fill(-Infinity);
    const top = new Float64Array(m);
    const topr = new Float64Array(m);
    const axes = new ort.Tensor('int64', BigInt64Array.from([1n]), [1]);
    const hT = f32(h, [m, d]);
    const hrT = ref && f32(ref.h, [m, d]);
    const session = await (ref ? sessions.compareSlice() : sessions.headSlice());
    await forVocabSlices(ref ? [w, ref.w] : [w], vocab, d, m, async ([ws, wr], r0, r1) => {
      const n = r1 - r0;
      const feeds: Record<string, ort.Tensor> = { h: hT, w: f32(ws!, [n, d]), axes };
      if (hrT) Object.assign(feeds, { hr: hrT, wr: f32(wr!, [n, d]) });
      const r = await session.run(feeds);
      const part = r['z_lse']!.data as Float64Array;
      for (let i = 0; i < m; i++) {
        lse[i] = logAddExp(lse[i]!, part[i]!);
        const t = targets[i]!;
        if (t >= r0 && t < r1) {
          let z = 0;
          for (let p = 0; p < d; p++) z += h[i * d + p]! * ws![(t - r0) * d + p]!;
          target[i] = z;
        }
      }
      if (!ref) return;
      const partr = r['zr_lse']!.data as Float64Array;
      const max = r['z_m']!.data as Float32Array;
      const maxr = r['zr_m']!.data as Float32Array;
      shifted.push({ maxr, gap: r['gap']!.data as Float64Array });
      const at = r['top']!.data as BigInt64Array;
      const atr = r['topr']!.data as BigInt64Array;
      for (let i = 0; i < m; i++) {
        lser[i] = logAddExp(lser[i]!, partr[i]!);
        if (max[i]! > best[i]!) [best[i], top[i]] = [max[i]!, r0 + Number(at[i]!)];
        if (maxr[i]! > bestr[i]!) [bestr[i], topr[i]] = [maxr[i]!, r0 + Number(atr[i]!)];
      }
    });
    const nll = Float32Array.from(lse, (l, i) => l - target[i]!);
    if (!ref) return { nll };
    const kl = new Float32Array(m);
    const agree = new Uint8Array(m);
    for (let i = 0; i < m; i++) {
      let gap = 0;
      for (const s of shifted) gap += Math.exp(s.maxr[i]! - lser[i]!) * s.gap[i]!;
      kl[i] = gap - lser[i]! + lse[i]!;
      agree[i] = top[i] === topr[i] ? 1 : 0;
    }
    return { nll, kl, agree };
  },
};
