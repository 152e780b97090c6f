import { ACTIVATIONS, decoderConfig, type ConfigReader, type ModelConfig } from './config.js';
import { fail, shown } from '../io/errors.js';
import { readRope, type RopeConfig } from './rope.js';
import { LLAMA_LINEAR, LLAMA_TENSORS } from './decoder.js';
import type { Family } from './registry.js';

const ATTENTION = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj'];
const MLP = ['mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];

/**
 * The fields every Llama-layout config shares (Llama, Mistral, Qwen2/3, Granite, OLMo2 differ only in options):
 * shapes, head_dim, norm epsilon, RoPE and its scaling, tied embeddings, special ids, the MLP activation,
 * `attention_bias` (q/k/v/o) and `mlp_bias` (gate/up/down) where the family has them.
 */
export function llamaLayout(
  c: ConfigReader,
  o: {
    defaultEps: number;
    defaultTheta?: number;
    biasFlags?: boolean;
    partialRotary?: boolean;
    ropeAliases?: Record<string, RopeConfig['type']>;
    ropeParams?: Record<string, unknown>;
  },
): ModelConfig {
  const hiddenSize = c.int('hidden_size');
  const numHeads = c.int('num_attention_heads');
  const numKvHeads = c.int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0)
    fail(`${c.where}: num_attention_heads ${numHeads} is not divisible by num_key_value_heads ${numKvHeads}`);
  if (!c.has('head_dim') && hiddenSize % numHeads !== 0) {
    fail(`${c.where}: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads} (and no head_dim is given)`);
  }
  const headDim = c.int('head_dim', hiddenSize / numHeads);
  const maxPositions = c.int('max_position_embeddings', 2048);
  const act = c.str('hidden_act', 'silu');
  const activation = ACTIVATIONS[act];
  if (!activation) fail(`${c.where}: hidden_act ${shown(act)} is not supported (supported: ${Object.keys(ACTIVATIONS).join(', ')})`);
  const biases = new Set<string>();
  if (o.biasFlags !== false) {
    if (c.bool('attention_bias', false)) ATTENTION.forEach((n) => biases.add(n));
    if (c.bool('mlp_bias', false)) MLP.forEach((n) => biases.add(n));
  }
  const rope = readRope(c, headDim, maxPositions, {
    ...(o.defaultTheta ? { defaultTheta: o.defaultTheta } : {}),
    ...(o.ropeAliases ? { aliases: o.ropeAliases } : {}),
    ...(o.ropeParams ? { params: o.ropeParams } : {}),
  });
  if (rope.dim !== headDim && !o.partialRotary)
    fail(`${c.where}: a partial_rotary_factor (${rope.dim} of ${headDim} dimensions rotated) is not supported for this layout`);
  const bos = c.ids('bos_token_id');
  return decoderConfig({
    modelType: c.str('model_type', ''),
    hiddenSize,
    intermediateSize: c.int('intermediate_size'),
    numLayers: c.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: c.int('vocab_size'),
    // dynamic NTK scaling exists to run past max_position_embeddings
    maxPositions: rope.type === 'dynamic' ? Math.floor(maxPositions * rope.factor) : maxPositions,
    rmsNormEps: c.num('rms_norm_eps', o.defaultEps),
    rope,
    tieWordEmbeddings: c.bool('tie_word_embeddings', false),
    bosTokenId: bos[0],
    eosTokenIds: c.ids('eos_token_id'),
    activation,
    tensors: LLAMA_TENSORS,
    linear: LLAMA_LINEAR,
    biases,
    norms: { attnIn: 'input_layernorm', mlpIn: 'post_attention_layernorm' },
  });
}

/**
 * Per-layer sliding windows: transformers 5 writes `layer_types` (sliding_attention / full_attention); older
 * configs give `sliding_window` for every layer (Mistral) or from `max_window_layers` on when
 * `use_sliding_window` is set (Qwen2).
 */
export function slidingWindows(
  c: ConfigReader,
  numLayers: number,
  o: { qwen: boolean; pattern?: number },
): (layer: number) => number | undefined {
  const window = c.has('sliding_window') ? c.int('sliding_window') : (c.value('sliding_window'), undefined);
  const types = c.value('layer_types') as unknown;
  // Mistral and Phi-3: a window when one is given (null: every layer attends to everything)
  const useSliding = o.qwen ? c.bool('use_sliding_window', false) : window !== undefined;
  const maxWindowLayers = o.qwen && c.has('max_window_layers') ? c.int('max_window_layers') : numLayers;
  let sliding: boolean[];
  if (types !== undefined && types !== null) {
    if (!Array.isArray(types) || types.length !== numLayers || types.some((t) => t !== 'sliding_attention' && t !== 'full_attention')) {
      fail(`${c.where}: layer_types must list sliding_attention or full_attention for each of the ${numLayers} layers`);
    }
    sliding = types.map((t) => t === 'sliding_attention');
  } else if (o.pattern) {
    // Gemma 2/3 before layer_types: every pattern-th layer is global, the others slide
    sliding = Array.from({ length: numLayers }, (_, l) => (l + 1) % o.pattern! !== 0);
  } else {
    sliding = Array.from({ length: numLayers }, (_, l) => useSliding && (!o.qwen || l >= maxWindowLayers));
  }
  if (sliding.some(Boolean) && window === undefined) fail(`${c.where}: sliding attention layers need a sliding_window`);
  return (layer) => (sliding[layer] ? window : undefined);
}

export const llama: Family = {
  modelTypes: ['llama'],
  honours:
    'hidden_act (silu, gelu, gelu_pytorch_tanh, relu), attention_bias, mlp_bias, head_dim, rope_theta, rope_scaling / rope_parameters (linear, dynamic, llama3, yarn, longrope), tie_word_embeddings, eos_token_id lists',
  parseConfig: (c) => llamaLayout(c, { defaultEps: 1e-6 }),
  gguf: { arch: 'llama', interleavedRope: true, activation: 'silu', biases: 'any', ropeFreqs: true },
};
