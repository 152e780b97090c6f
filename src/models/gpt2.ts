import { fail } from '../io/errors.js';
import { decoderConfig, ACTIVATIONS, type ConfigReader, type ModelConfig } from './config.js';
import type { Family } from './registry.js';

/**
 * GPT-2: learned positions, LayerNorm with bias, c_attn fused as q | k | v, a tanh-GELU MLP, biases everywhere,
 * and Conv1D weights stored [in, out]: the quantizer works on them as [out, in] (their rows are output
 * channels), GPTQ checkpoints hold them as the loaders' QuantLinear expects, fake-quant ones as stored.
 */
function parseGpt2(c: ConfigReader): ModelConfig {
  const hiddenSize = c.int('n_embd');
  const numHeads = c.int('n_head');
  if (hiddenSize % numHeads !== 0) fail(`${c.where}: n_embd ${hiddenSize} is not divisible by n_head ${numHeads}`);
  const headDim = hiddenSize / numHeads;
  const act = c.str('activation_function', 'gelu_new');
  const activation = ACTIVATIONS[act];
  if (!activation) fail(`${c.where}: activation_function ${JSON.stringify(act)} is not supported`);
  c.only('scale_attn_weights', [true], 'scores scaled by 1/sqrt(head_dim)');
  c.only('scale_attn_by_inverse_layer_idx', [false], 'not implemented');
  c.only('reorder_and_upcast_attn', [false], 'not implemented');
  c.only('add_cross_attention', [false], 'decoder-only models');
  // the sequence-classification head's settings, unused by the language model
  for (const k of ['summary_activation', 'summary_first_dropout', 'summary_proj_to_labels', 'summary_type', 'summary_use_proj', 'n_ctx'])
    c.value(k);
  const bos = c.ids('bos_token_id');
  const linear = {
    q: 'attn.c_attn',
    k: 'attn.c_attn',
    v: 'attn.c_attn',
    qkv: 'attn.c_attn',
    o: 'attn.c_proj',
    up: 'mlp.c_fc',
    down: 'mlp.c_proj',
  };
  return decoderConfig({
    modelType: 'gpt2',
    hiddenSize,
    intermediateSize: c.int('n_inner', 4 * hiddenSize),
    numLayers: c.int('n_layer'),
    numHeads,
    numKvHeads: numHeads,
    headDim,
    vocabSize: c.int('vocab_size'),
    maxPositions: c.int('n_positions', 1024),
    rmsNormEps: c.num('layer_norm_epsilon', 1e-5),
    tieWordEmbeddings: c.bool('tie_word_embeddings', true),
    bosTokenId: bos[0],
    eosTokenIds: c.ids('eos_token_id'),
    activation,
    fusedQkv: 'concat',
    transposedLinears: true,
    tensors: {
      embed: 'transformer.wte.weight',
      positions: 'transformer.wpe.weight',
      finalNorm: 'transformer.ln_f.weight',
      head: 'lm_head.weight',
      layers: 'transformer.h.',
    },
    linear,
    mlp: 'plain',
    normKind: 'layer',
    positionOffset: 0,
    biases: new Set([linear.qkv, linear.o, linear.up, linear.down]),
    norms: { attnIn: 'ln_1', mlpIn: 'ln_2' },
  });
}

export const gpt2: Family = {
  modelTypes: ['gpt2'],
  honours: 'n_embd/n_layer/n_head/n_inner/n_positions, activation_function, layer_norm_epsilon, Conv1D weights, tied embeddings',
  parseConfig: parseGpt2,
  gguf: { arch: 'gpt2', activation: 'gelu_tanh', biases: 'all', features: ['learned-positions'] },
};
