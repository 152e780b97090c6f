import type { Family } from './registry.js';
import { llamaLayout, slidingWindows } from './llama.js';

/** Qwen2: the Llama layout with biases on q, k and v (not o), and optional sliding windows. */
export const qwen2: Family = {
  modelTypes: ['qwen2'],
  honours: 'the Llama fields, q/k/v biases, use_sliding_window / max_window_layers / sliding_window (or layer_types)',
  parseConfig: (c) => {
    const cfg = llamaLayout(c, { defaultEps: 1e-6, biasFlags: false });
    return {
      ...cfg,
      biases: new Set(['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj']),
      slidingWindow: slidingWindows(c, cfg.numLayers, { qwen: true }),
    };
  },
  gguf: { arch: 'qwen2', activation: 'silu', biases: 'qkv', capContextAtWindow: true },
};

/** Qwen3: the Llama layout with an RMSNorm over each head of q and k before RoPE. */
export const qwen3: Family = {
  modelTypes: ['qwen3'],
  honours: 'the Llama fields, attention_bias, q/k head norms, use_sliding_window / max_window_layers / sliding_window (or layer_types)',
  parseConfig: (c) => {
    const cfg = llamaLayout(c, { defaultEps: 1e-6 });
    return { ...cfg, qkNorm: 'head', slidingWindow: slidingWindows(c, cfg.numLayers, { qwen: true }) };
  },
  gguf: { arch: 'qwen3', activation: 'silu', biases: 'qkv', features: ['qk-norm-head'], capContextAtWindow: true },
};
