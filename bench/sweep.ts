import { seededRandom } from '../src/calib/windows.js';
import * as gptqNow from '../src/quant/gptq.js';
import * as hessianNow from '../src/quant/hessian.js';
import * as ortNow from '../src/tensor/ort.js';
import { baselineTree } from './baseline.js';
import { printTable } from './table.js';

/**
 * GPTQ's per-layer costs at real shapes on random data, beside the backend's sgemm and dgemm rates measured in
 * the same run: Hessian accumulation (one calibration chunk of 2048 positions, the pipeline's at these widths,
 * rated by one triangle of XᵀX as bench:scale's floor counts it), the Hessian's preparation
 * (damping, blocked float64 Cholesky of H⁻¹), and the sweep (4-bit, groups of 128, symmetric, blocks of 128).
 *
 *   npm run bench:sweep [-- --baseline REV] [--large]
 *
 * `--baseline REV` runs the same measurements on the source tree of git revision REV in the same process,
 * alternating with this tree's, for a before/after table. `--large` adds the 4096 x 14336 layer and its Hessian's
 * accumulation: its Hessian is 1.6 GB in float64 and the factorization holds several such matrices (a run with the
 * baseline was killed for memory beside a 10 GB job on this 24 GB machine). Times are the best of `REPS` runs (one
 * for --large; Hessians: 5), as the machine is shared.
 */
const REPS = 3;
const HESSIAN_REPS = 5;
const args = process.argv.slice(2);
const large = args.includes('--large');
const baselineRev = args.includes('--baseline') ? args[args.indexOf('--baseline') + 1] : undefined;

interface Tree {
  label: string;
  gptq: typeof gptqNow;
  hessian: typeof hessianNow;
  backend: typeof ortNow.ortBackend;
}
const trees: Tree[] = [{ label: 'this tree', gptq: gptqNow, hessian: hessianNow, backend: ortNow.ortBackend }];
const baseline = baselineRev === undefined ? undefined : baselineTree(baselineRev);
if (baseline) {
  const { load } = baseline;
  trees.unshift({
    label: baseline.rev,
    gptq: await load('src/quant/gptq.ts'),
    hessian: await load('src/quant/hessian.ts'),
    backend: (await load<typeof ortNow>('src/tensor/ort.ts')).ortBackend,
  });
}

const rand = seededRandom(1);
const random = (n: number): Float32Array => Float32Array.from({ length: n }, () => rand() - 0.5);

/** The trees in alternating order, so that neither always runs right after the other's garbage. */
const inTurn = <T>(items: T[], rep: number): [number, T][] => {
  const order = [...items.entries()];
  return rep % 2 ? order.reverse() : order;
};

/** Best wall time in ms of fn over reps runs of each tree, the trees alternating; `untimed` runs before each. */
async function best(reps: number, fn: (t: Tree) => Promise<unknown>, among = trees, untimed?: () => Promise<void>): Promise<number[]> {
  const ms = among.map(() => Infinity);
  for (let i = 0; i < reps; i++) {
    for (const [k, t] of inTurn(among, i)) {
      await untimed?.();
      const t0 = performance.now();
      await fn(t);
      ms[k] = Math.min(ms[k]!, performance.now() - t0);
    }
  }
  return ms;
}

const { ortBackend } = ortNow;
const gflops = (flop: number, ms: number): number => flop / ms / 1e6;
const bestOf = async (fn: () => Promise<unknown>): Promise<number> => (await best(REPS, fn, [trees[0]!]))[0]!;
const SG = { m: 4096, n: 4096, k: 4096 };
const sgemmA = random(SG.m * SG.k);
const sgemmB = random(SG.n * SG.k);
let sgemm = 0;
/** one sgemm, keeping the best rate seen: run beside the Hessians and at both ends, as the machine's load drifts */
async function sgemmOnce(): Promise<void> {
  const t0 = performance.now();
  await ortBackend.matmulNT(sgemmA, sgemmB, SG.m, SG.n, SG.k);
  sgemm = Math.max(sgemm, gflops(2 * SG.m * SG.n * SG.k, performance.now() - t0));
}
for (let i = 0; i <= REPS; i++) await sgemmOnce();
const DG = 2048;
const dgemmA = Float64Array.from(sgemmA.subarray(0, DG * DG));
const dgemm = gflops(2 * DG ** 3, await bestOf(() => ortBackend.matmul64(dgemmA, dgemmA, DG, DG, DG, true)));

const rows: (string | number)[][] = [];
const cell = (values: number[], digits: number): string[] => values.map((v) => v.toFixed(digits));
const ratio = (values: number[]): string[] => (values.length === 2 ? [`${(values[0]! / values[1]!).toFixed(2)}x`] : []);

/** A Hessian 2/n·XᵀX from n random positions, as HessianAccumulator builds it. */
async function randomHessian(cols: number, n: number): Promise<Float64Array> {
  const acc = new hessianNow.HessianAccumulator(cols, ortBackend);
  const x = random(n * cols);
  // a shared component so that H is not diagonally dominant
  for (let i = 0; i < x.length; i += 7) x[i]! += 0.3;
  await acc.add(x, n, 1);
  await acc.flush();
  return acc.h;
}

const hessianRates: number[] = [];
const opts = { ...gptqNow.GPTQ_REFERENCE, bits: 4, groupSize: 128, sym: true };
// the calibration chunk the pipeline feeds a 7B/8B-shaped block's Hessians (2^25 floats of its widest inputs), and
// chunks per timing: the accumulator holds chunks and multiplies them together (e1beab6), so each timing adds
// CHUNKS of them and flushes (a tree from before that has no flush and multiplies each as it comes)
const CHUNK = 2048;
const CHUNKS = 4;
for (const cols of [4096, 11008, ...(large ? [14336] : [])]) {
  const x = random(CHUNK * cols);
  // the running Hessian is made once and kept, as the pipeline keeps it across chunks; timed beside the sgemm above
  const accs = new Map(trees.map((tree) => [tree, new tree.hessian.HessianAccumulator(cols, tree.backend)]));
  const t = await best(
    HESSIAN_REPS,
    async (tree) => {
      const acc = accs.get(tree)!;
      for (let c = 0; c < CHUNKS; c++) await acc.add(x, CHUNK, 1);
      await acc.flush?.();
    },
    trees,
    sgemmOnce,
  );
  // one triangle of XᵀX: the flop a syrk does, the floor bench:scale counts
  const rates = t.map((v) => gflops(CHUNKS * CHUNK * cols * cols, v));
  rows.push([`Hessian accumulation ${CHUNKS} x ${CHUNK} x ${cols}, GFLOP/s (one triangle)`, ...cell(rates, 0), ...ratio(t)]);
  hessianRates.push(...rates);
}

for (const [out, cols, reps] of [[4096, 4096, REPS], [14336, 4096, REPS], ...(large ? [[4096, 14336, 1]] : [])] as const) {
  const h = await randomHessian(cols, Math.min(cols, 4096));
  const w = random(out * cols);
  // each tree's factorization, then its sweep on it, timed apart; one prepared Hessian alive at a time
  const prep = trees.map(() => Infinity);
  const sweep = trees.map(() => Infinity);
  for (let i = 0; i < reps; i++) {
    for (const [k, tree] of inTurn(trees, i)) {
      let t0 = performance.now();
      const prepared = await tree.gptq.prepareHessian(h, cols, opts, undefined, undefined, tree.backend.matmul64);
      prep[k] = Math.min(prep[k]!, performance.now() - t0);
      const { matmulNT, matmulNN } = tree.backend;
      t0 = performance.now();
      await tree.gptq.gptq(w, h, out, cols, opts, { prepared, matmulNT, matmulNN });
      sweep[k] = Math.min(sweep[k]!, performance.now() - t0);
    }
  }
  rows.push([
    `factorization d=${cols}, s`,
    ...cell(
      prep.map((v) => v / 1000),
      2,
    ),
    ...ratio(prep),
  ]);
  rows.push([
    `sweep ${out} x ${cols}, s`,
    ...cell(
      sweep.map((v) => v / 1000),
      2,
    ),
    ...ratio(sweep),
  ]);
  const total = sweep.map((v, i) => v + prep[i]!);
  rows.push([
    `  with its factorization, s`,
    ...cell(
      total.map((v) => v / 1000),
      2,
    ),
    ...ratio(total),
  ]);
}
baseline?.remove();
for (let i = 0; i < REPS; i++) await sgemmOnce();
const blank = trees.length === 2 ? ['', ''] : [];
rows.unshift(
  [`sgemm ${SG.m}x${SG.n}x${SG.k} (onnxruntime), GFLOP/s`, sgemm.toFixed(0), ...blank],
  [`dgemm ${DG}^3 (onnxruntime), GFLOP/s`, dgemm.toFixed(0), ...blank],
);
const hessianCases = hessianRates.length / trees.length;
for (let c = hessianCases - 1; c >= 0; c--) {
  const pct = hessianRates.slice(c * trees.length, (c + 1) * trees.length).map((r) => `${((100 * r) / sgemm).toFixed(0)}%`);
  rows.splice(3 + c, 0, [`  as % of sgemm`, ...pct, ...blank.slice(1)]);
}

printTable(
  `GPTQ layer costs, w4 g128 sym, blocks of 128 (best of ${REPS}, Hessians of ${HESSIAN_REPS}; ${trees.length === 2 ? 'before/after ratio = speed-up' : 'pass --baseline REV for before/after'})`,
  ['', ...trees.map((t) => t.label), ...(trees.length === 2 ? ['speed-up'] : [])],
  rows,
);
