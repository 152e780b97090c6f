import { readFileSync } from 'node:fs';
import os from 'node:os';

/**
 * The CPU every figure was measured on, in one line: this workplace's machines differ (AVX-512 on some, AVX2 only
 * on others), and onnxruntime's and llama.cpp's kernels with them, so figures from different machines compare only
 * with this beside them.
 */
export function machine(): string {
  let info = '';
  try {
    info = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return `${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.availableParallelism()} cores`;
  }
  const model = /^model name\s*:\s*(.*)$/m.exec(info)?.[1] ?? os.cpus()[0]?.model ?? 'unknown CPU';
  const flags = new Set((/^flags\s*:\s*(.*)$/m.exec(info)?.[1] ?? '').split(' '));
  const isa = flags.has('avx512f') ? 'AVX-512' : flags.has('avx2') ? 'AVX2, no AVX-512' : 'no AVX2';
  return `${model}, ${os.availableParallelism()} cores, ${isa}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`;
}

let machinePrinted = false;

/** Print rows as an aligned text table (benchmarks' common output), the machine's line before the first. */
export function printTable(title: string, header: string[], rows: (string | number)[][]): void {
  if (!machinePrinted) console.log(`\nmachine: ${machine()}`);
  machinePrinted = true;
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(`\n${title}\n${line(header)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  for (const r of cells.slice(1)) console.log(line(r));
}

/** Median wall time in ms of `fn` over `reps` runs after one warm-up. */
export async function timeMs(fn: () => unknown, reps = 5): Promise<number> {
  await fn();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  return times.sort((a, b) => a - b)[Math.floor(reps / 2)]!;
}
