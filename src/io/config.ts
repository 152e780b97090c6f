import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fail } from './errors.js';

/** The Llama hyper-parameters the forward pass needs, read from a Hugging Face config.json. */
export interface LlamaConfig {
  modelType: 'llama';
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  vocabSize: number;
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number;
  eosTokenId: number;
}

export const SUPPORTED_MODEL_TYPES = ['llama'];

export function readConfigJson(dir: string): Record<string, unknown> {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) fail(`${path}: not found (is ${dir} a Hugging Face model directory?)`);
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch {
    fail(`${path}: not valid JSON`);
  }
}

export function parseLlamaConfig(raw: Record<string, unknown>, where: string): LlamaConfig {
  if (raw['model_type'] !== 'llama') {
    fail(`${where}: unsupported model_type ${JSON.stringify(raw['model_type'])} (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  }
  const int = (key: string, dflt?: number): number => {
    const v = raw[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0)
      fail(`${where}: ${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const num = (key: string, dflt: number): number => {
    const v = raw[key] ?? dflt;
    if (typeof v !== 'number' || !(v > 0)) fail(`${where}: ${key} must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  const cfg: LlamaConfig = {
    modelType: 'llama',
    hiddenSize: int('hidden_size'),
    intermediateSize: int('intermediate_size'),
    numLayers: int('num_hidden_layers'),
    numHeads: int('num_attention_heads'),
    numKvHeads: int('num_key_value_heads', raw['num_attention_heads'] as number),
    vocabSize: int('vocab_size'),
    maxPositions: int('max_position_embeddings', 2048),
    rmsNormEps: num('rms_norm_eps', 1e-6),
    ropeTheta: num('rope_theta', 10000),
    tieWordEmbeddings: raw['tie_word_embeddings'] === true,
    bosTokenId: (raw['bos_token_id'] as number | undefined) ?? 1,
    eosTokenId: (raw['eos_token_id'] as number | undefined) ?? 2,
  };
  if (cfg.hiddenSize % cfg.numHeads !== 0)
    fail(`${where}: hidden_size ${cfg.hiddenSize} is not divisible by num_attention_heads ${cfg.numHeads}`);
  if (cfg.numHeads % cfg.numKvHeads !== 0)
    fail(`${where}: num_attention_heads ${cfg.numHeads} is not divisible by num_key_value_heads ${cfg.numKvHeads}`);
  if (raw['rope_scaling'] != null) fail(`${where}: rope_scaling is not supported yet`);
  return cfg;
}

export function toHfConfig(cfg: LlamaConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    vocab_size: cfg.vocabSize,
    max_position_embeddings: cfg.maxPositions,
    rms_norm_eps: cfg.rmsNormEps,
    rope_theta: cfg.ropeTheta,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    hidden_act: 'silu',
    bos_token_id: cfg.bosTokenId,
    eos_token_id: cfg.eosTokenId,
    torch_dtype: 'float32',
  };
}
