import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fail } from '../io/errors.js';
import { LlamaTokenizer } from '../io/tokenizer.js';
import { getBackend } from '../tensor/index.js';
import { Llama } from './llama.js';

/** A model directory's model and tokenizer, on the default backend. */
export async function loadModel(dir: string): Promise<{ model: Llama; tokenizer: LlamaTokenizer }> {
  if (!existsSync(dir)) fail(`${dir}: model directory not found`);
  const model = await Llama.load(dir, await getBackend());
  return { model, tokenizer: loadTokenizer(dir) };
}

export function loadTokenizer(dir: string): LlamaTokenizer {
  const path = join(dir, 'tokenizer.json');
  if (!existsSync(path)) fail(`${path}: not found (the model directory needs a tokenizer.json)`);
  return LlamaTokenizer.fromTokenizerJson(path);
}
