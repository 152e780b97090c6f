/**
 * Re-runs this Node process once with glibc's malloc told to keep freed memory and to back large blocks with
 * transparent huge pages. onnxruntime-node copies every output into a freshly allocated buffer; with glibc's
 * defaults each large buffer is a new mapping whose every 4 KB page faults on first touch (measured on the
 * 2-core VM: ~3 µs a page, so a 64 MB gemm output costs 200 ms on top of a 13 ms gemm). With these settings the
 * same gemm returns in 22 ms. Tunables are read only at process start, hence the relaunch.
 *
 * Skipped off Linux/glibc, when GLIBC_TUNABLES is already set (the user's choice, or we are the relaunched
 * child), or when GPTQ_TS_NO_RELAUNCH is set. Imported for its effect: in the parent it waits for the child and
 * exits with the child's status, so nothing after the import runs twice.
 */
import { spawn } from 'node:child_process';

const TUNABLES = 'glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296';

function onGlibc() {
  if (process.platform !== 'linux' || !process.report) return false;
  process.report.excludeNetwork = true; // the report is only read for its libc; its network part is the slow one
  return Boolean(process.report.getReport().header.glibcVersionRuntime);
}

if (process.env.GLIBC_TUNABLES === undefined && !process.env.GPTQ_TS_NO_RELAUNCH && onGlibc()) {
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, GLIBC_TUNABLES: TUNABLES },
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
