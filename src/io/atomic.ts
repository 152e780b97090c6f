import { existsSync, lstatSync, mkdirSync, readdirSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { fail } from './errors.js';

/**
 * Outputs are built under a temporary sibling name (`.NAME.tmp-PID-TIME`) and renamed into place at the end, so
 * a crash, Ctrl-C or SIGTERM never leaves something at the target that looks complete. An existing target is
 * never removed unless the caller asked for replacement, and even then only after the new output is complete;
 * some paths (the input, the current or home directory, `/`, or any folder holding one of them) are never
 * replaced at all.
 */

/** What to do when the target already exists: refuse (default), replace it (the user's --force), or keep it. */
export type OnExisting = 'refuse' | 'replace' | 'keep';

export interface OutputPolicy {
  onExisting?: OnExisting;
  /** the inputs of the run: never replaced, nor any folder that holds one */
  inputs?: string[];
  /** how the CLI names the output in messages (e.g. "--out") */
  label?: string;
}

const TEMP_RE = /^\.(.+)\.(?:tmp|old)-(\d+)-\d+$/;

/** Resolve symlinks as far as the path exists, so `a/../b` and links name what they really touch. */
function realish(path: string): string {
  const abs = resolve(path);
  let head = abs;
  const tail: string[] = [];
  while (!existsSync(head)) {
    const up = dirname(head);
    if (up === head) break;
    tail.unshift(basename(head));
    head = up;
  }
  return join(realpathSync(head), ...tail);
}

function contains(outer: string, inner: string): boolean {
  const rel = relative(outer, inner);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/**
 * Refuse, before any work, an output path whose replacement would lose data: one line naming the path. A target
 * that is, or holds, an input or the current/home/root directory is refused even with replacement allowed.
 * What a killed earlier run left beside the target is tidied first, so the check sees what will really be there.
 */
export function checkOutputPath(target: string, policy: OutputPolicy = {}): void {
  removeStaleTemps(target);
  const label = policy.label ? `${policy.label} ${target}` : target;
  if (!existsSync(target) && !isDanglingLink(target)) return;
  const real = realish(target);
  const guarded: [string, string][] = [
    ...(policy.inputs ?? []).map((p): [string, string] => [realish(p), `the input ${p}`]),
    [realish(process.cwd()), 'the current directory'],
    [realish(homedir()), 'your home directory'],
    ['/', 'the root directory'],
  ];
  for (const [path, what] of guarded) {
    if (contains(real, path)) {
      fail(`${label}: refusing to replace ${real === path ? what : `a folder that holds ${what}`}; choose a new path`);
    }
  }
  const onExisting = policy.onExisting ?? 'refuse';
  if (onExisting === 'refuse' && !isEmptyDir(target)) {
    fail(`${label} already exists and is not empty; choose a new path, or pass --force to replace it once the new output is complete`);
  }
}

function isDanglingLink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

function isEmptyDir(path: string): boolean {
  try {
    return statSync(path).isDirectory() && readdirSync(path).length === 0;
  } catch {
    return false;
  }
}

/** Whether process pid exists (EPERM: it does, owned by someone else). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Tidy what a killed earlier run left beside `target` (its process is gone): unfinished builds are removed; a
 * replaced original that was set aside is put back if the new output never arrived, else removed.
 */
export function removeStaleTemps(target: string): void {
  const parent = dirname(resolve(target));
  if (!existsSync(parent)) return;
  for (const entry of readdirSync(parent)) {
    const m = TEMP_RE.exec(entry);
    if (!m || m[1] !== basename(target) || alive(Number(m[2]))) continue;
    const path = join(parent, entry);
    if (entry.includes('.old-') && !existsSync(target)) renameSync(path, target);
    else rmSync(path, { recursive: true, force: true });
  }
}

const exitCleanups = new Set<() => void>();

/**
 * Run `undo` if the process exits (process.exit, as the CLI's signal handlers do) while it is registered;
 * returns the function that unregisters it.
 */
export function onExit(undo: () => void): () => void {
  if (exitCleanups.size === 0) process.on('exit', runExitCleanups);
  exitCleanups.add(undo);
  return () => {
    exitCleanups.delete(undo);
    if (exitCleanups.size === 0) process.removeListener('exit', runExitCleanups);
  };
}

/** Latest first, like unwinding: a child process writing into a temporary is killed before the temporary goes. */
function runExitCleanups(): void {
  for (const undo of [...exitCleanups].reverse()) undo();
}

/** Let pending signals run their handlers (which exit) before a step that makes an output visible. */
export const yieldToSignals = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * Build an output (file or directory) at a temporary sibling path and rename it into place. An existing target is
 * refused, replaced only after the build succeeded, or (`keep`) left as is with the new build discarded, which
 * lets racing processes publish one cache entry.
 */
export async function writeAtomically<T>(
  target: string,
  build: (tmpPath: string) => Promise<T> | T,
  policy: OutputPolicy = {},
): Promise<T> {
  checkOutputPath(target, policy);
  const parent = dirname(resolve(target));
  mkdirSync(parent, { recursive: true });
  const stamp = `${process.pid}-${Date.now()}`;
  const tmp = join(parent, `.${basename(target)}.tmp-${stamp}`);
  const old = join(parent, `.${basename(target)}.old-${stamp}`);
  const unregister = onExit(() => rmSync(tmp, { recursive: true, force: true }));
  try {
    const result = await build(tmp);
    await yieldToSignals();
    if (existsSync(target) || isDanglingLink(target)) {
      if (policy.onExisting === 'keep') return result;
      // checked again: the target may have appeared while we worked
      checkOutputPath(target, policy);
      if (isEmptyDir(target)) rmSync(target, { recursive: true });
      else {
        renameSync(target, old);
        try {
          renameSync(tmp, target);
        } catch (e) {
          renameSync(old, target);
          throw e;
        }
        rmSync(old, { recursive: true, force: true });
        return result;
      }
    }
    renameSync(tmp, target);
    return result;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
    unregister();
  }
}
