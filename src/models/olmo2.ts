import type { Family } from './registry.js';
import { llamaLayout } from './llama.js';

/**
 * OLMo 2: RMSNorm over the whole q and k projections before RoPE, and the block's norms moved after attention and
 * after the MLP (each output is normed before it joins the residual stream; nothing is normed on the way in).
 */
export const olmo2: Family = {
  modelTypes: ['olmo2'],
  honours: 'the Llama fields (attention_bias, no mlp_bias), q/k norms over the projection, norms after attention and MLP',
  parseConfig: (c) => ({
    ...llamaLayout(c, { defaultEps: 1e-5 }),
    qkNorm: 'full',
    norms: { attnOut: 'post_attention_layernorm', mlpOut: 'post_feedforward_layernorm' },
  }),
  gguf: {
    arch: 'olmo2',
    activation: 'silu',
    biases: 'none',
    features: ['qk-norm-full', 'post-norms'],
    head: 'untied',
    unsupported: (cfg) =>
      cfg.headDim * cfg.numHeads !== cfg.hiddenSize
        ? `llama.cpp's olmo2 takes head_dim as hidden_size / num_attention_heads, not ${cfg.headDim}`
        : undefined,
  },
};
