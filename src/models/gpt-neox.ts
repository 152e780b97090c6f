import { fail } from '../io/errors.js';
import { decoderConfig, ACTIVATIONS, type ConfigReader, type ModelConfig } from './config.js';
import { readRope } from './rope.js';
import type { Family } from './registry.js';

/**
 * GPT-NeoX (Pythia, GPT-J-like layouts): LayerNorm with bias, query_key_value fused per head, partial rotary
 * embeddings (the first rotary_pct of each head), a GELU MLP, and by default the parallel residual
 * x + attn(ln1(x)) + mlp(ln2(x)). True-sequential groups: [query_key_value] → [dense] → [dense_h_to_4h] →
 * [dense_4h_to_h].
 */
function parseNeox(c: ConfigReader): ModelConfig {
  const hiddenSize = c.int('hidden_size');
  const numHeads = c.int('num_attention_heads');
  if (hiddenSize % numHeads !== 0) fail(`${c.where}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
  const headDim = hiddenSize / numHeads;
  const maxPositions = c.int('max_position_embeddings', 2048);
  const act = c.str('hidden_act', 'gelu');
  const activation = ACTIVATIONS[act];
  if (!activation) fail(`${c.where}: hidden_act ${JSON.stringify(act)} is not supported`);
  // older configs: rotary_pct and rotary_emb_base instead of rope_parameters
  const legacy = c.has('rotary_pct') || c.has('rotary_emb_base');
  const legacyParams = legacy
    ? {
        rope_type: 'default',
        ...((c.value('rope_scaling') as object | null) ?? {}),
        rope_theta: c.num('rotary_emb_base', 10000),
        partial_rotary_factor: c.num('rotary_pct', 1),
      }
    : undefined;
  const rope = readRope(c, headDim, maxPositions, legacyParams ? { params: legacyParams } : {});
  const bias = c.bool('attention_bias', true);
  const bos = c.ids('bos_token_id');
  const linear = {
    q: 'attention.query_key_value',
    k: 'attention.query_key_value',
    v: 'attention.query_key_value',
    qkv: 'attention.query_key_value',
    o: 'attention.dense',
    up: 'mlp.dense_h_to_4h',
    down: 'mlp.dense_4h_to_h',
  };
  return decoderConfig({
    modelType: 'gpt_neox',
    hiddenSize,
    intermediateSize: c.int('intermediate_size'),
    numLayers: c.int('num_hidden_layers'),
    numHeads,
    numKvHeads: numHeads,
    headDim,
    vocabSize: c.int('vocab_size'),
    maxPositions,
    rmsNormEps: c.num('layer_norm_eps', 1e-5),
    rope,
    tieWordEmbeddings: c.bool('tie_word_embeddings', false),
    bosTokenId: bos[0],
    eosTokenIds: c.ids('eos_token_id'),
    activation,
    fusedQkv: 'per-head',
    parallel: c.bool('use_parallel_residual', true),
    tensors: {
      embed: 'gpt_neox.embed_in.weight',
      finalNorm: 'gpt_neox.final_layer_norm.weight',
      head: 'embed_out.weight',
      layers: 'gpt_neox.layers.',
    },
    linear,
    mlp: 'plain',
    normKind: 'layer',
    biases: new Set([...(bias ? [linear.qkv, linear.o] : []), linear.up, linear.down]),
    norms: { attnIn: 'input_layernorm', mlpIn: 'post_attention_layernorm' },
  });
}

export const gptNeox: Family = {
  modelTypes: ['gpt_neox'],
  honours:
    'use_parallel_residual, partial rotary (rope_parameters or rotary_pct / rotary_emb_base), attention_bias, hidden_act, layer_norm_eps',
  parseConfig: parseNeox,
  gguf: {
    arch: 'gptneox',
    activation: 'gelu_tanh',
    biases: 'all',
    features: ['parallel'],
    head: 'untied',
    metadata: (cfg) => ({ use_parallel_residual: cfg.parallel }),
  },
};
