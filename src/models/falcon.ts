import { fail } from '../io/errors.js';
import { decoderConfig, ACTIVATIONS, type ConfigReader, type ModelConfig } from './config.js';
import { readRope } from './rope.js';
import type { Family } from './registry.js';

/**
 * Falcon: RoPE, LayerNorm with bias, a GELU MLP, query_key_value fused (quantized and exported as stored) in one of
 * three layouts: the new decoder architecture's per-kv-head groups (Falcon-40B/180B), multi-query q | k | v with
 * one kv head (Falcon-7B), or per head. Blocks are parallel (attention and MLP both read the block input, with
 * one shared LayerNorm or ln_attn/ln_mlp) or sequential.
 */
function parseFalcon(c: ConfigReader): ModelConfig {
  const hiddenSize = c.int('hidden_size');
  const numHeads = c.int('num_attention_heads');
  if (hiddenSize % numHeads !== 0) fail(`${c.where}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
  const headDim = hiddenSize / numHeads;
  c.only('alibi', [false], 'Falcon with ALiBi is not implemented (released Falcons use RoPE)');
  const newArch = c.bool('new_decoder_architecture', false);
  const multiQuery = c.bool('multi_query', true);
  const parallel = c.bool('parallel_attn', true);
  const numKvHeads = newArch ? c.int('num_kv_heads', numHeads) : multiQuery ? 1 : numHeads;
  if (!newArch) c.value('num_kv_heads');
  if (numHeads % numKvHeads !== 0) fail(`${c.where}: num_attention_heads ${numHeads} is not divisible by num_kv_heads ${numKvHeads}`);
  const lnCount = c.has('num_ln_in_parallel_attn')
    ? c.int('num_ln_in_parallel_attn')
    : (c.value('num_ln_in_parallel_attn'), newArch ? 2 : 1);
  if (lnCount !== 1 && lnCount !== 2) fail(`${c.where}: num_ln_in_parallel_attn ${lnCount} is not 1 or 2`);
  const maxPositions = c.int('max_position_embeddings', 2048);
  const act = c.str('activation', 'gelu');
  const activation = ACTIVATIONS[act];
  if (!activation) fail(`${c.where}: activation ${JSON.stringify(act)} is not supported`);
  const bias = c.bool('bias', false);
  const bos = c.ids('bos_token_id');
  const qkv = 'self_attention.query_key_value';
  const linear = { q: qkv, k: qkv, v: qkv, qkv, o: 'self_attention.dense', up: 'mlp.dense_h_to_4h', down: 'mlp.dense_4h_to_h' };
  const norms = !parallel
    ? { attnIn: 'input_layernorm', mlpIn: 'post_attention_layernorm' }
    : newArch && lnCount === 2
      ? { attnIn: 'ln_attn', mlpIn: 'ln_mlp' }
      : { attnIn: 'input_layernorm', mlpIn: 'input_layernorm' };
  return decoderConfig({
    modelType: 'falcon',
    hiddenSize,
    intermediateSize: c.int('ffn_hidden_size', 4 * hiddenSize),
    numLayers: c.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: c.int('vocab_size'),
    maxPositions,
    rmsNormEps: c.num('layer_norm_epsilon', 1e-5),
    rope: readRope(c, headDim, maxPositions),
    tieWordEmbeddings: c.bool('tie_word_embeddings', true),
    bosTokenId: bos[0],
    eosTokenIds: c.ids('eos_token_id'),
    activation,
    fusedQkv: newArch ? 'grouped' : multiQuery ? 'concat' : 'per-head',
    parallel: parallel || newArch,
    tensors: {
      embed: 'transformer.word_embeddings.weight',
      finalNorm: 'transformer.ln_f.weight',
      head: 'lm_head.weight',
      layers: 'transformer.h.',
    },
    linear,
    mlp: 'plain',
    normKind: 'layer',
    biases: new Set(bias ? [qkv, linear.o, linear.up, linear.down] : []),
    norms,
  });
}

export const falcon: Family = {
  modelTypes: ['falcon'],
  honours:
    'new_decoder_architecture (grouped query_key_value, num_kv_heads, ln_attn/ln_mlp), multi_query, parallel_attn, num_ln_in_parallel_attn, bias, activation, ffn_hidden_size, RoPE',
  parseConfig: parseFalcon,
  gguf: {
    arch: 'falcon',
    activation: 'gelu_tanh',
    biases: 'none',
    features: ['parallel'],
    // with two norms, llama.cpp's attn_norm is the MLP's (ln_mlp) and attn_norm_2 attention's (ln_attn)
    norms: (cfg) => (cfg.norms.attnIn === cfg.norms.mlpIn ? {} : { attnIn: 'attn_norm_2', mlpIn: 'attn_norm' }),
    unsupported: (cfg) => (cfg.parallel ? undefined : "llama.cpp's falcon runs attention and the MLP in parallel (parallel_attn: false)"),
  },
};
