import { fail } from '../io/errors.js';
import { decoderConfig, ACTIVATIONS, type ConfigReader, type ModelConfig } from './config.js';
import type { Family } from './registry.js';

/**
 * OPT, the GPTQ paper's own family: LayerNorm with bias, learned position embeddings offset by 2, a ReLU MLP
 * (fc1 → fc2), biases on every linear, pre-norm or (OPT-350m) post-norm blocks, and OPT-350m's projections
 * between a narrower embedding (word_embed_proj_dim) and the hidden width. True-sequential groups as in the
 * reference code: [q, k, v] → [out_proj] → [fc1] → [fc2].
 */
function parseOpt(c: ConfigReader): ModelConfig {
  const hiddenSize = c.int('hidden_size');
  const numHeads = c.int('num_attention_heads');
  if (hiddenSize % numHeads !== 0) fail(`${c.where}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
  const maxPositions = c.int('max_position_embeddings', 2048);
  const embedDim = c.int('word_embed_proj_dim', hiddenSize);
  const preNorm = c.bool('do_layer_norm_before', true);
  const removeFinal = c.bool('_remove_final_layer_norm', false);
  const finalNorm = preNorm && !removeFinal;
  const act = c.str('activation_function', 'relu');
  const activation = ACTIVATIONS[act];
  if (!activation) fail(`${c.where}: activation_function ${JSON.stringify(act)} is not supported`);
  c.only('enable_bias', [true], 'OPT checkpoints carry biases on every linear layer');
  c.only('layer_norm_elementwise_affine', [true], 'LayerNorms with weights and biases');
  const bos = c.ids('bos_token_id');
  const linear = { q: 'self_attn.q_proj', k: 'self_attn.k_proj', v: 'self_attn.v_proj', o: 'self_attn.out_proj', up: 'fc1', down: 'fc2' };
  return decoderConfig({
    modelType: 'opt',
    hiddenSize,
    intermediateSize: c.int('ffn_dim'),
    numLayers: c.int('num_hidden_layers'),
    numHeads,
    numKvHeads: numHeads,
    headDim: hiddenSize / numHeads,
    vocabSize: c.int('vocab_size'),
    maxPositions,
    // torch.nn.LayerNorm's default
    rmsNormEps: 1e-5,
    tieWordEmbeddings: c.bool('tie_word_embeddings', true),
    bosTokenId: bos[0],
    eosTokenIds: c.ids('eos_token_id'),
    activation,
    tensors: {
      embed: 'model.decoder.embed_tokens.weight',
      positions: 'model.decoder.embed_positions.weight',
      ...(embedDim !== hiddenSize ? { projectIn: 'model.decoder.project_in.weight', projectOut: 'model.decoder.project_out.weight' } : {}),
      ...(finalNorm ? { finalNorm: 'model.decoder.final_layer_norm.weight' } : {}),
      head: 'lm_head.weight',
      layers: 'model.decoder.layers.',
    },
    linear,
    mlp: 'plain',
    normKind: 'layer',
    positionOffset: 2,
    embedDim,
    biases: new Set(Object.values(linear)),
    norms: preNorm
      ? { attnIn: 'self_attn_layer_norm', mlpIn: 'final_layer_norm' }
      : { attnResidual: 'self_attn_layer_norm', mlpResidual: 'final_layer_norm' },
    attentionScale: 1 / Math.sqrt(hiddenSize / numHeads),
  });
}

export const opt: Family = {
  modelTypes: ['opt'],
  honours:
    'do_layer_norm_before (pre- or post-norm), _remove_final_layer_norm, word_embed_proj_dim, activation_function, ffn_dim, tied embeddings',
  parseConfig: parseOpt,
};
