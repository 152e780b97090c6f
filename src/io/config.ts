import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fail } from './errors.js';

/** config.json of a model directory, parsed (the model families read it: models/registry.ts). */
export function readConfigJson(dir: string): Record<string, unknown> {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) fail(`${path}: not found (is ${dir} a Hugging Face model directory?)`);
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch {
    fail(`${path}: not valid JSON`);
  }
}
