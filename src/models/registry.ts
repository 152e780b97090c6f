import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fail, shown } from '../io/errors.js';
import { readConfigJson } from '../io/config.js';
import { ConfigReader, type ModelConfig } from './config.js';
import type { GgufArch } from './gguf-layout.js';
import { bloom } from './bloom.js';
import { falcon } from './falcon.js';
import { gemma, gemma2, gemma3Text } from './gemma.js';
import { granite } from './granite.js';
import { gptNeox } from './gpt-neox.js';
import { gpt2 } from './gpt2.js';
import { llama } from './llama.js';
import { mistral } from './mistral.js';
import { olmo2 } from './olmo2.js';
import { opt } from './opt.js';
import { phi3 } from './phi3.js';
import { qwen2, qwen3 } from './qwen.js';

/** A model family: how its config.json maps onto the decoder (one file per family under models/). */
export interface Family {
  readonly modelTypes: readonly string[];
  /** the config fields it honours, for `inspect` and the README */
  readonly honours: string;
  /** reads config.json strictly: a field the family does not implement is refused by name (ConfigReader.finish) */
  parseConfig(c: ConfigReader): ModelConfig;
  /** its llama.cpp architecture, where llama.cpp has one (GGUF export) */
  readonly gguf?: GgufArch;
}

export const FAMILIES: readonly Family[] = [
  llama,
  mistral,
  qwen2,
  qwen3,
  phi3,
  gemma,
  gemma2,
  gemma3Text,
  granite,
  olmo2,
  opt,
  bloom,
  gpt2,
  gptNeox,
  falcon,
];

export const SUPPORTED_MODEL_TYPES = FAMILIES.flatMap((f) => f.modelTypes);

export function familyOf(modelType: unknown, where: string): Family {
  const f = FAMILIES.find((fam) => fam.modelTypes.includes(modelType as string));
  if (!f) fail(`${where}: unsupported model_type ${shown(modelType)} (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  return f;
}

/** config.json (already parsed) → the decoder's config, refusing what the family does not implement. */
export function parseModelConfig(raw: unknown, where: string): ModelConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(`${where}: not a JSON object`);
  const c = new ConfigReader(raw as Record<string, unknown>, where);
  const cfg = familyOf(c.value('model_type'), where).parseConfig(c);
  c.finish();
  return cfg;
}

/** A model directory's config, with generation_config.json's end-of-sequence ids added to config.json's. */
export function readModelConfig(dir: string): ModelConfig {
  const cfg = parseModelConfig(readConfigJson(dir), `${dir}/config.json`);
  const genPath = join(dir, 'generation_config.json');
  if (existsSync(genPath)) {
    let gen: unknown;
    try {
      gen = JSON.parse(readFileSync(genPath, 'utf8'));
    } catch {
      fail(`${genPath}: not valid JSON`);
    }
    if (typeof gen !== 'object' || gen === null || Array.isArray(gen)) fail(`${genPath}: not a JSON object`);
    const eos = (gen as Record<string, unknown>)['eos_token_id'];
    const ids = eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos : [eos];
    if (!ids.every((id) => Number.isInteger(id) && id >= 0)) fail(`${genPath}: eos_token_id must be a token id or a list of them`);
    cfg.eosTokenIds = [...new Set([...cfg.eosTokenIds, ...(ids as number[])])];
  }
  return cfg;
}
