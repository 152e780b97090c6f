import { fail, shown } from '../io/errors.js';
import { ACTIVATIONS, slidingWindowsOf, type ConfigReader, type ModelConfig } from './config.js';
import { llamaLayout, slidingWindows } from './llama.js';
import { readRope } from './rope.js';
import type { Family } from './registry.js';

/**
 * Gemma's changes to the Llama layout, all three generations: RMSNorms scale by (1 + w), embeddings are scaled by
 * sqrt(hidden_size), the MLP is tanh-GELU, embeddings are tied.
 */
function gemmaBase(
  c: ConfigReader,
  activationKey: 'hidden_act' | 'hidden_activation',
  o: { ropeParams?: Record<string, unknown> } = {},
): ModelConfig {
  // transformers reads Gemma 1's legacy "gelu" as the tanh approximation it always meant
  const named = c.str(activationKey, 'gelu_pytorch_tanh');
  const act = activationKey === 'hidden_act' && named === 'gelu' ? 'gelu_tanh' : ACTIVATIONS[named];
  if (!act) fail(`${c.where}: ${activationKey} ${shown(named)} is not supported`);
  if (activationKey === 'hidden_activation')
    c.only('hidden_act', [undefined, null, 'gelu_pytorch_tanh'], 'Gemma 2/3 use hidden_activation');
  c.only('use_bidirectional_attention', [null, false], 'causal decoding only');
  const cfg = llamaLayout(c, { defaultEps: 1e-6, biasFlags: false, ...(o.ropeParams ? { ropeParams: o.ropeParams } : {}) });
  c.only('attention_bias', [false], 'Gemma has no biases');
  return {
    ...cfg,
    activation: act,
    tieWordEmbeddings: c.bool('tie_word_embeddings', true),
    normOffset: true,
    embeddingScale: Math.fround(Math.sqrt(cfg.hiddenSize)),
  };
}

/** Gemma 2 and 3: norms before and after attention and the MLP, query_pre_attn_scalar, alternating sliding windows. */
function sandwich(c: ConfigReader, cfg: ModelConfig): ModelConfig {
  return {
    ...cfg,
    norms: {
      attnIn: 'input_layernorm',
      attnOut: 'post_attention_layernorm',
      mlpIn: 'pre_feedforward_layernorm',
      mlpOut: 'post_feedforward_layernorm',
    },
    attentionScale: c.num('query_pre_attn_scalar', cfg.headDim) ** -0.5,
    slidingWindow: slidingWindows(c, cfg.numLayers, {
      qwen: false,
      pattern: c.has('sliding_window_pattern') ? c.int('sliding_window_pattern') : 2,
    }),
  };
}

/** What llama.cpp's gemma architectures share: (1 + w) norms (its files hold 1 + w), the sqrt(hidden) embedding scale. */
const GEMMA_FEATURES = ['norm-offset', 'gemma-embedding-scale'] as const;

/** llama.cpp's Gemma 2/3 scale attention by 1/sqrt(head_dim), except its 27B (by layer count) by 1/sqrt(hidden / heads). */
const gemmaAttentionScale =
  (layers27b: number) =>
  (cfg: ModelConfig): number =>
    cfg.numLayers === layers27b ? 1 / Math.sqrt(cfg.hiddenSize / cfg.numHeads) : 1 / Math.sqrt(cfg.headDim);

const optionalCap = (c: ConfigReader, key: string): number | undefined => (c.has(key) ? c.num(key) : (c.value(key), undefined));

export const gemma: Family = {
  modelTypes: ['gemma'],
  honours: 'the Llama fields without biases; (1 + w) norms, sqrt(hidden) embedding scale, tanh-GELU (hidden_act), tied embeddings',
  parseConfig: (c) => gemmaBase(c, 'hidden_act'),
  gguf: { arch: 'gemma', activation: 'gelu_tanh', biases: 'none', features: GEMMA_FEATURES, head: 'tied' },
};

export const gemma2: Family = {
  modelTypes: ['gemma2'],
  honours:
    'Gemma, plus norms after attention and MLP, attn_logit_softcapping, final_logit_softcapping, query_pre_attn_scalar, sliding_window on alternate layers (layer_types)',
  parseConfig: (c) => ({
    ...sandwich(c, gemmaBase(c, 'hidden_activation')),
    attnSoftcap: optionalCap(c, 'attn_logit_softcapping'),
    finalSoftcap: optionalCap(c, 'final_logit_softcapping'),
  }),
  gguf: {
    arch: 'gemma2',
    activation: 'gelu_tanh',
    biases: 'none',
    features: [...GEMMA_FEATURES, 'post-norms', 'sliding-window', 'attn-softcap', 'final-softcap'],
    head: 'tied',
    attentionScale: gemmaAttentionScale(46),
    // its graph always caps both and always slides on some layers (4096 and every other layer by default)
    unsupported: (cfg) =>
      cfg.attnSoftcap === undefined || cfg.finalSoftcap === undefined
        ? "llama.cpp's gemma2 always soft-caps attention scores and logits"
        : slidingWindowsOf(cfg).length === 0
          ? "llama.cpp's gemma2 always has sliding-window layers"
          : undefined,
  },
};

export const gemma3Text: Family = {
  modelTypes: ['gemma3_text'],
  honours:
    'Gemma 2, plus q/k norms per head, a local RoPE for sliding layers (rope_parameters per layer type, or rope_local_base_freq), sliding_window_pattern',
  parseConfig: (c) => {
    // transformers 5 nests RoPE per layer type; older configs give the global one (rope_theta, rope_scaling) and rope_local_base_freq
    const nested = c.raw['rope_parameters'] as Record<string, Record<string, unknown> | undefined> | undefined;
    const full = nested?.['full_attention'] ?? {
      rope_type: 'default',
      ...((c.raw['rope_scaling'] as object | null) ?? {}),
      rope_theta: c.raw['rope_theta'] ?? 1e6,
    };
    const local = nested?.['sliding_attention'] ?? { rope_type: 'default', rope_theta: c.raw['rope_local_base_freq'] ?? 1e4 };
    for (const k of ['rope_parameters', 'rope_scaling', 'rope_theta', 'rope_local_base_freq']) c.value(k);
    c.value('_sliding_window_pattern');
    const cfg = sandwich(c, gemmaBase(c, 'hidden_activation', { ropeParams: full }));
    return {
      ...cfg,
      qkNorm: 'head',
      localRope: readRope(c, cfg.headDim, cfg.maxPositions, { params: local }),
      attnSoftcap: optionalCap(c, 'attn_logit_softcapping'),
      finalSoftcap: optionalCap(c, 'final_logit_softcapping'),
    };
  },
  gguf: {
    arch: 'gemma3',
    activation: 'gelu_tanh',
    biases: 'none',
    features: [...GEMMA_FEATURES, 'post-norms', 'qk-norm-head', 'sliding-window', 'final-softcap'],
    attentionScale: gemmaAttentionScale(62),
  },
};
