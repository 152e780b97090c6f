import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';

/**
 * Build an output (file or directory) under a temporary sibling name and rename it into place at the end,
 * so a crash or Ctrl-C never leaves something at `target` that looks complete.
 */
export async function writeAtomically<T>(target: string, build: (tmpPath: string) => Promise<T> | T): Promise<T> {
  const tmp = join(dirname(target), `.${basename(target)}.tmp-${process.pid}-${Date.now()}`);
  mkdirSync(dirname(target), { recursive: true });
  const cleanup = (): void => rmSync(tmp, { recursive: true, force: true });
  process.once('exit', cleanup);
  try {
    const result = await build(tmp);
    if (existsSync(target)) rmSync(target, { recursive: true, force: true });
    renameSync(tmp, target);
    return result;
  } finally {
    cleanup();
    process.removeListener('exit', cleanup);
  }
}

export function writeFileAtomically(target: string, data: string | Uint8Array): Promise<void> {
  return writeAtomically(target, (tmp) => writeFileSync(tmp, data));
}
