import { spawnSync } from 'node:child_process';
import { ortBackend } from '../src/tensor/ort.js';
import * as ref from '../src/tensor/ref.js';
import { printTable, timeMs } from './table.js';

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

/** numpy's float32 matmul time in ms per shape, or undefined without numpy. */
function numpyMs(shapes: Gemm[]): number[] | undefined {
  const script = `
import json, sys, time, numpy as np
out = []
for m, n, k in json.loads(sys.argv[1]):
    a = np.random.rand(m, k).astype(np.float32); b = np.random.rand(n, k).astype(np.float32)
    a @ b.T
    ts = []
    for _ in range(5):
        t = time.perf_counter(); a @ b.T; ts.append(time.perf_counter() - t)
    out.append(sorted(ts)[2] * 1000)
print(json.dumps(out))`;
  const env = { ...process.env };
  // the machine pins an old OpenBLAS core type for safety; unset it so numpy runs its best kernel
  delete env['OPENBLAS_CORETYPE'];
  delete env['OPENBLAS_L2_SIZE'];
  const r = spawnSync('python3', ['-c', script, JSON.stringify(shapes.map((g) => [g.m, g.n, g.k]))], { encoding: 'utf8', env });
  if (r.status !== 0) return undefined;
  return JSON.parse(r.stdout) as number[];
}

const rand = (n: number): Float32Array => Float32Array.from({ length: n }, () => Math.random() - 0.5);
const gflops = (flop: number, ms: number): string => (flop / ms / 1e6).toFixed(1);

const np = numpyMs(GEMMS);
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
printTable('Kernels (onnxruntime backend, all cores)', ['kernel', 'ms', 'GFLOP/s', 'reference', 'ref GFLOP/s', 'ours/ref'], rows);
