import { spawnSync } from 'node:child_process';
import { ortBackend } from '../src/tensor/ort.js';
import * as ref from '../src/tensor/ref.js';
import { upperCholeskyOfInverse, upperCholeskyOfInverseBlocked } from '../src/tensor/cholesky.js';
import { printTable, timeMs } from './table.js';
import { nativeDecodeAttention, nativeHalfKv, nativeIsa, useNativeKernel } from '../src/tensor/native.js';

/**
 * Kernel throughput (GFLOP/s) of the fast backend, against the best local reference: OpenBLAS through numpy
 * when python3-numpy is installed, else the plain-TS definition.
 */
interface Gemm {
  label: string;
  m: number;
  n: number;
  k: number;
}
const GEMMS: Gemm[] = [
  { label: 'sgemm 1024^3', m: 1024, n: 1024, k: 1024 },
  { label: '4096x4096 @ 4096x128', m: 4096, n: 128, k: 4096 },
  { label: '4096x128 @ 128x4096', m: 4096, n: 4096, k: 128 },
];

/**
 * numpy's time in ms for each job, or undefined without numpy: ['gemm', m, n, k] is A[m,k]·B[n,k]ᵀ in float32,
 * ['gram', n, d] is XᵀX, ['chol', d] is the float64 Cholesky factor and its inverse.
 */
type Job = ['gemm', number, number, number] | ['gram', number, number] | ['chol', number];
function numpyMs(jobs: Job[]): number[] | undefined {
  const script = `
import json, sys, time, numpy as np
def run(job):
    kind = job[0]
    if kind == 'gemm':
        m, n, k = job[1:]; a = np.random.rand(m, k).astype(np.float32); b = np.random.rand(n, k).astype(np.float32)
        return lambda: a @ b.T
    if kind == 'gram':
        n, d = job[1:]; x = np.random.rand(n, d).astype(np.float32)
        return lambda: x.T @ x
    d = job[1]; x = np.random.rand(2 * d, d); h = x.T @ x + d * np.eye(d)
    return lambda: np.linalg.inv(np.linalg.cholesky(h))
out = []
for job in json.loads(sys.argv[1]):
    f = run(job); f()
    ts = []
    for _ in range(3):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    out.append(sorted(ts)[1] * 1000)
print(json.dumps(out))`;
  const env = { ...process.env };
  // the machine pins an old OpenBLAS core type for safety; unset it so numpy runs its best kernel
  delete env['OPENBLAS_CORETYPE'];
  delete env['OPENBLAS_L2_SIZE'];
  const r = spawnSync('python3', ['-c', script, JSON.stringify(jobs)], { encoding: 'utf8', env });
  if (r.status !== 0) return undefined;
  return JSON.parse(r.stdout) as number[];
}

const rand = (n: number): Float32Array => Float32Array.from({ length: n }, () => Math.random() - 0.5);
const gflops = (flop: number, ms: number): string => (flop / ms / 1e6).toFixed(1);

const CHOL_D = process.argv.includes('--large') ? 4096 : 2048;
const GRAM = { n: 2048, d: 4096 };
const np = numpyMs([...GEMMS.map((g): Job => ['gemm', g.m, g.n, g.k]), ['gram', GRAM.n, GRAM.d], ['chol', CHOL_D]]);
const rows: (string | number)[][] = [];
for (const [i, g] of GEMMS.entries()) {
  const a = rand(g.m * g.k);
  const b = rand(g.n * g.k);
  const flop = 2 * g.m * g.n * g.k;
  const ours = await timeMs(() => ortBackend.matmulNT(a, b, g.m, g.n, g.k));
  let refLabel: string;
  let refMs: number;
  if (np) {
    refLabel = 'numpy/OpenBLAS';
    refMs = np[i]!;
  } else {
    refLabel = 'plain TS';
    refMs = await timeMs(() => ref.matmulNT(a, b, g.m, g.n, g.k), 1);
  }
  rows.push([g.label, ours.toFixed(2), gflops(flop, ours), refLabel, gflops(flop, refMs), `${((refMs / ours) * 100).toFixed(0)}%`]);
}
{
  const x = rand(GRAM.n * GRAM.d);
  // what a calibration batch costs the Hessian: XᵀX accumulated into float64 H (numpy: the float32 product alone)
  const h = new Float64Array(GRAM.d * GRAM.d);
  const ours = await timeMs(() => ortBackend.accumulateGram(h, x, GRAM.n, GRAM.d, 0.5, 1));
  const flop = 2 * GRAM.n * GRAM.d * GRAM.d;
  const refMs = np ? np[GEMMS.length]! : (await timeMs(() => ref.gram(x, 256, GRAM.d), 1)) * (GRAM.n / 256);
  rows.push([
    `Hessian H += XᵀX d=${GRAM.d} n=${GRAM.n}`,
    ours.toFixed(1),
    gflops(flop, ours),
    np ? 'numpy/OpenBLAS' : 'plain TS',
    gflops(flop, refMs),
    `${((refMs / ours) * 100).toFixed(0)}%`,
  ]);
}
{
  const d = CHOL_D;
  const x = rand(2 * d * d);
  const h = new Float64Array(d * d);
  // a well-conditioned SPD matrix: d·I plus a low-rank-ish Gram part
  for (let i = 0; i < d; i++)
    for (let j = 0; j < d; j++) h[i * d + j] = (i === j ? d : 0) + x[(i * 7 + j * 3) % x.length]! * x[(j * 7 + i * 3) % x.length]!;
  const flop = (2 * d ** 3) / 3;
  const row = (label: string, ms: number): (string | number)[] => [
    label,
    ms.toFixed(0),
    gflops(flop, ms),
    np ? 'numpy/OpenBLAS' : '-',
    np ? gflops(flop, np[GEMMS.length + 1]!) : '-',
    np ? `${((np[GEMMS.length + 1]! / ms) * 100).toFixed(0)}%` : '-',
  ];
  const consumed = h.slice(); // the blocked routine works in place
  let t = performance.now();
  await upperCholeskyOfInverseBlocked(consumed, d, ortBackend.matmul64.bind(ortBackend));
  rows.push(row(`Cholesky + inverse d=${d} (float64, blocked)`, performance.now() - t));
  if (process.argv.includes('--plain')) {
    t = performance.now();
    upperCholeskyOfInverse(h, d);
    rows.push(row(`Cholesky + inverse d=${d} (float64, plain TS)`, performance.now() - t));
  }
}
printTable(
  'Kernels (onnxruntime backend, all cores; blocked Cholesky: panels in TypeScript, gemms on onnxruntime float64; --plain adds the unblocked TS one)',
  ['kernel', 'ms', 'GFLOP/s', 'reference', 'ref GFLOP/s', 'ours/ref'],
  rows,
);

/*
 * A decode step's attention over a KV cache at Llama-2-7B's heads (32 of 128), one call: the cache position-major
 * ([ctx, heads, d], as it was kept before 47f594d: the graph transposes it) against head-major ([heads, ctx, d], as
 * KvCache keeps it: AttentionShape.kvCapacity), the same keys and values; and the native kernel on the head-major one,
 * float32 and float16 (Decoder.kvCache's default where the kernel is built).
 */
{
  const [heads, d] = [32, 128];
  const decodeRows: (string | number)[][] = [];
  for (const ctx of [40, 256, 1024, 2048]) {
    const q = rand(heads * d);
    const [k, v] = [rand(ctx * heads * d), rand(ctx * heads * d)];
    const [kh, vh] = [new Float32Array(k.length), new Float32Array(v.length)];
    for (let j = 0; j < ctx; j++)
      for (let h = 0; h < heads; h++) {
        kh.set(k.subarray((j * heads + h) * d, (j * heads + h + 1) * d), (h * ctx + j) * d);
        vh.set(v.subarray((j * heads + h) * d, (j * heads + h + 1) * d), (h * ctx + j) * d);
      }
    const shape = { batch: 1, seq: 1, ctx, heads, kvHeads: heads, headDim: d };
    const headMajor = { ...shape, kvCapacity: ctx };
    const native = nativeIsa() ? (await timeMs(() => nativeDecodeAttention(q, kh, vh, headMajor), 9)).toFixed(3) : 'not built';
    const half = nativeHalfKv(shape);
    let nativeHalf = 'not built';
    if (half) {
      const [k16, v16] = [new Uint16Array(k.length), new Uint16Array(v.length)];
      half.store(k, k16, ctx, 0, ctx);
      half.store(v, v16, ctx, 0, ctx);
      nativeHalf = (await timeMs(() => half.attend(q, k16, v16, headMajor), 9)).toFixed(3);
    }
    useNativeKernel(false);
    const before = await timeMs(() => ortBackend.attention(q, k, v, shape), 9);
    const after = await timeMs(() => ortBackend.attention(q, kh, vh, headMajor), 9);
    useNativeKernel(true);
    decodeRows.push([`${ctx} positions`, before.toFixed(3), after.toFixed(3), `${(before / after).toFixed(1)}x`, native, nativeHalf]);
  }
  printTable(
    'Decode attention, one query over a KV cache, 32 heads of 128 (median of 9 calls): onnxruntime graphs, and the native kernel on a float32 and a float16 cache (generation runs the float16 one where it is built)',
    ['cache', 'position-major ms', 'head-major ms', 'speed-up', 'native head-major ms', 'native float16 ms'],
    decodeRows,
  );
}
