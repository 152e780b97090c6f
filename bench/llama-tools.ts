import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * The folder holding llama.cpp's llama-quantize, llama-perplexity and llama-imatrix: LLAMA_TOOLS when set, else
 * GPTQ_TS_CACHE/llama-tools (default ~/.cache/gptq-ts), built there on first use from the source node-llama-cpp
 * ships (scripts/gguf/build-llama-tools.sh, about a minute).
 */
export function llamaTools(): string {
  const given = process.env['LLAMA_TOOLS'];
  if (given) return given;
  const dir = join(process.env['GPTQ_TS_CACHE'] ?? join(homedir(), '.cache', 'gptq-ts'), 'llama-tools');
  if (!existsSync(join(dir, 'llama-perplexity'))) {
    console.error(`building llama.cpp's tools into ${dir} ...`);
    execFileSync('bash', [join(import.meta.dirname, '..', 'scripts', 'gguf', 'build-llama-tools.sh'), dir], { stdio: 'inherit' });
  }
  return dir;
}

/** Runs one of the tools; its stdout, or an error carrying the end of its stderr. */
export function runLlamaTool(bin: string, tool: string, args: string[]): string {
  try {
    return execFileSync(join(bin, tool), args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 2 ** 20 });
  } catch (e) {
    throw new Error(`${tool} ${args.join(' ')} failed: ${(e as { stderr?: string }).stderr?.slice(-400) ?? e}`);
  }
}
