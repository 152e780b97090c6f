import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let root: string | undefined;

/**
 * A fresh directory for one test, under one root per test file that is removed when the file's process exits.
 * The suite writes checkpoints and GGUF files of hundreds of MB in all; left behind, every run would add them to
 * the machine's disk until writes fail with ENOSPC (as a CI run did).
 */
export function tempDir(prefix: string): string {
  if (!root) {
    root = mkdtempSync(join(tmpdir(), 'gptq-ts-test-'));
    const made = root;
    process.on('exit', () => rmSync(made, { recursive: true, force: true }));
  }
  return mkdtempSync(join(root, prefix));
}
