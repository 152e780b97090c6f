import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fail } from '../io/errors.js';
import { LlamaTokenizer } from '../io/tokenizer.js';
import { getBackend } from '../tensor/index.js';
import { readConfigJson } from '../io/config.js';
import { readGptqLinear, readQuantConfig } from '../formats/gptq.js';
import { dequantize } from '../quant/quantized-layer.js';
import { Llama, type LinearReader } from './llama.js';

/** A model directory's model and tokenizer, on the default backend. */
export async function loadModel(dir: string): Promise<{ model: Llama; tokenizer: LlamaTokenizer }> {
  if (!existsSync(dir)) fail(`${dir}: model directory not found`);
  const model = await Llama.load(dir, await getBackend(), linearReader(dir));
  return { model, tokenizer: loadTokenizer(dir) };
}

export function loadTokenizer(dir: string): LlamaTokenizer {
  const path = join(dir, 'tokenizer.json');
  if (!existsSync(path)) fail(`${path}: not found (the model directory needs a tokenizer.json)`);
  return LlamaTokenizer.fromTokenizerJson(path);
}

/** Float weights for a float checkpoint; for a GPTQ checkpoint the packed layers, unpacked and dequantized. */
export function linearReader(dir: string): LinearReader | undefined {
  const qc = readQuantConfig(dir, readConfigJson(dir));
  if (!qc) return undefined;
  return (st, name, [rows, cols]) => dequantize(readGptqLinear(st, name, rows, cols, qc));
}
