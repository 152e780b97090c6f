/**
 * Re-runs this Node process once with glibc's malloc tuned for the work it does. Tunables are read only at
 * process start, hence the relaunch.
 *
 * Quantizing: onnxruntime-node copies every output into a freshly allocated buffer; with glibc's defaults each
 * large buffer is a new mapping whose every 4 KB page faults on first touch (measured on the 2-core VM: ~3 µs a
 * page, so a 64 MB gemm output costs 200 ms on top of a 13 ms gemm). Keeping freed memory (mmap and trim
 * thresholds of 4 GiB) and backing large blocks with transparent huge pages, the same gemm returns in 22 ms, and
 * the float64 factorization of a 4096-wide Hessian takes 1.1 s instead of 1.7 s with a 16 MiB mmap threshold.
 * The main arena cannot grow by brk under Node on x64: V8 reserves its code range at the program break (for short
 * builtin calls), so each time the arena runs out glibc maps a new region the size of that one request, whose
 * pages are fresh (about 2.6 ms a 2 MB huge page to fault in on this VM). A top pad of 1 GiB gives each such region
 * room for the requests after it (untouched padding costs no memory): fewer faults and less kernel time, measured
 * in the README's Scale section; most fresh pages remain, presumably the arena's growth between collections.
 *
 * Evaluating, generating, inspecting: loading builds every packed layer's operator from transient buffers that
 * a 4 GiB threshold keeps for the life of the process (a whole Llama-2-7B shape, w4 g128: eval peak RSS 6.30 GB,
 * generate 6.83 GB). Blocks of 16 MiB and more are mapped and returned instead (4.26 and 4.88 GB), at the same
 * tokens/s within the machine's noise, since batch-1 outputs are small.
 *
 * The workload is `GPTQ_TS_MALLOC` (`quantize` or `inference`) when set, else the CLI's subcommand (eval,
 * generate and inspect are inference), else quantize. Skipped off Linux/glibc, when GLIBC_TUNABLES is already set
 * (the user's choice, or we are the relaunched child), or when GPTQ_TS_NO_RELAUNCH is set. Imported for its
 * effect: in the parent it waits for the child and exits with the child's status, so nothing after the import
 * runs twice.
 */
import { spawn } from 'node:child_process';

const KEEP = 'glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296';
const TUNABLES = {
  quantize: `glibc.malloc.hugetlb=1:${KEEP}:glibc.malloc.top_pad=1073741824`,
  inference: 'glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=16777216:glibc.malloc.trim_threshold=4294967296',
};
const INFERENCE_COMMANDS = new Set(['eval', 'generate', 'inspect']);

function workload() {
  const named = process.env.GPTQ_TS_MALLOC;
  if (named !== undefined) {
    if (!(named in TUNABLES)) {
      process.stderr.write(`GPTQ_TS_MALLOC=${named}: expected one of ${Object.keys(TUNABLES).join(', ')}\n`);
      process.exit(2);
    }
    return named;
  }
  return INFERENCE_COMMANDS.has(process.argv[2] ?? '') ? 'inference' : 'quantize';
}

function onGlibc() {
  if (process.platform !== 'linux' || !process.report) return false;
  process.report.excludeNetwork = true; // the report is only read for its libc; its network part is the slow one
  return Boolean(process.report.getReport().header.glibcVersionRuntime);
}

if (process.env.GLIBC_TUNABLES === undefined && !process.env.GPTQ_TS_NO_RELAUNCH && onGlibc()) {
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, GLIBC_TUNABLES: TUNABLES[workload()] },
  });
  // Signals sent to us alone (kill PID, process managers, CI) are passed on. A terminal's Ctrl-C reaches the
  // child directly too; a second SIGINT finds it already exiting.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
  const [code, signal] = await new Promise((resolve) => child.on('exit', (c, s) => resolve([c, s])));
  if (signal) {
    process.removeAllListeners(signal);
    process.kill(process.pid, signal);
  }
  process.exit(code ?? 1);
}
