import { fail } from '../io/errors.js';
import { decoderConfig, type ConfigReader, type ModelConfig } from './config.js';
import type { Family } from './registry.js';

/**
 * BLOOM: ALiBi instead of position embeddings, a LayerNorm of the embeddings, LayerNorm with bias around
 * attention and the MLP, query_key_value fused with its columns per head (quantized and exported as stored),
 * a tanh-GELU MLP four times the hidden width, biases on every linear. No trained context limit (ALiBi); the
 * context we run at is `seq_length` where given, else 2048.
 */
function parseBloom(c: ConfigReader): ModelConfig {
  // BLOOM's config names (n_embed, n_layer, n_head) and transformers' own both occur
  const hiddenSize = c.has('n_embed') ? c.int('n_embed') : c.int('hidden_size');
  const numLayers = c.has('n_layer') ? c.int('n_layer') : c.int('num_hidden_layers');
  const numHeads = c.has('n_head') ? c.int('n_head') : c.int('num_attention_heads');
  for (const k of ['n_embed', 'hidden_size', 'n_layer', 'num_hidden_layers', 'n_head', 'num_attention_heads']) c.value(k);
  if (hiddenSize % numHeads !== 0) fail(`${c.where}: hidden size ${hiddenSize} is not divisible by ${numHeads} heads`);
  c.only('apply_residual_connection_post_layernorm', [false], 'the residual is the block input, as in every released BLOOM');
  // only changes how tensor-parallel shards were summed in training
  c.value('slow_but_exact');
  const bos = c.ids('bos_token_id');
  const linear = {
    q: 'self_attention.query_key_value',
    k: 'self_attention.query_key_value',
    v: 'self_attention.query_key_value',
    qkv: 'self_attention.query_key_value',
    o: 'self_attention.dense',
    up: 'mlp.dense_h_to_4h',
    down: 'mlp.dense_4h_to_h',
  };
  const headDim = hiddenSize / numHeads;
  return decoderConfig({
    modelType: 'bloom',
    hiddenSize,
    intermediateSize: 4 * hiddenSize,
    numLayers,
    numHeads,
    numKvHeads: numHeads,
    headDim,
    vocabSize: c.int('vocab_size'),
    maxPositions: c.int('seq_length', 2048),
    rmsNormEps: c.num('layer_norm_epsilon', 1e-5),
    tieWordEmbeddings: c.bool('tie_word_embeddings', true),
    bosTokenId: bos[0],
    eosTokenIds: c.ids('eos_token_id'),
    activation: 'gelu_tanh',
    fusedQkv: 'per-head',
    alibi: true,
    tensors: {
      embed: 'transformer.word_embeddings.weight',
      embedNorm: 'transformer.word_embeddings_layernorm.weight',
      finalNorm: 'transformer.ln_f.weight',
      head: 'lm_head.weight',
      layers: 'transformer.h.',
    },
    linear,
    mlp: 'plain',
    normKind: 'layer',
    biases: new Set([linear.qkv, linear.o, linear.up, linear.down]),
    norms: { attnIn: 'input_layernorm', mlpIn: 'post_attention_layernorm' },
  });
}

export const bloom: Family = {
  modelTypes: ['bloom'],
  honours:
    'n_embed/n_layer/n_head (or transformers names), layer_norm_epsilon, ALiBi, fused per-head query_key_value, tied embeddings, seq_length',
  parseConfig: parseBloom,
  gguf: { arch: 'bloom', activation: 'gelu_tanh', biases: 'all', features: ['alibi', 'embed-norm'] },
};
