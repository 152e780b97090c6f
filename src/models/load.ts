import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fail } from '../io/errors.js';
import { LlamaTokenizer } from '../io/tokenizer.js';
import { getBackend } from '../tensor/index.js';
import { readConfigJson } from '../io/config.js';
import { readGptqLinear, readQuantConfig } from '../formats/gptq.js';
import { dequantize } from '../quant/quantized-layer.js';
import { dequantizeBinary } from '../quant/gptqt.js';
import { readGptqtLinear } from '../formats/gptqt.js';
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

/** Float weights for a float checkpoint; for a GPTQ or GPTQT checkpoint the packed layers, unpacked and dequantized. */
export function linearReader(dir: string): LinearReader | undefined {
  const config = readConfigJson(dir);
  const bcq = config['quantization_config'] as { quant_method?: string; bits?: number } | undefined;
  if (bcq?.quant_method === 'gptqt') {
    const bits = bcq.bits;
    if (bits !== 2 && bits !== 3) fail(`${dir}/config.json: gptqt bits ${JSON.stringify(bits)} is not 2 or 3`);
    return (st, name, [rows, cols]) => dequantizeBinary(readGptqtLinear(st, name, rows, cols, bits));
  }
  const qc = readQuantConfig(dir, config);
  if (!qc) return undefined;
  return (st, name, [rows, cols]) => dequantize(readGptqLinear(st, name, rows, cols, qc));
}
