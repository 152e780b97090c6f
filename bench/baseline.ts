import { execSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

/**
 * Git revision `rev`'s src/ in a scratch directory beside ours, resolving packages through our node_modules, so a
 * benchmark can load both trees' modules into one process and alternate them (`--baseline REV`).
 */
export function baselineTree(rev: string): { rev: string; load<T>(path: string): Promise<T>; remove(): void } {
  const root = resolve(import.meta.dirname, '..');
  const scratch = mkdtempSync(join(tmpdir(), 'gptq-baseline-'));
  execSync(`git -C ${root} archive ${rev} src | tar -x -C ${scratch}`);
  symlinkSync(join(root, 'node_modules'), join(scratch, 'node_modules'));
  return {
    rev,
    load: async <T>(path: string): Promise<T> => (await import(join(scratch, path))) as T,
    remove: () => rmSync(scratch, { recursive: true, force: true }),
  };
}
