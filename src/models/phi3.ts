import type { Family } from './registry.js';
import { llamaLayout, slidingWindows } from './llama.js';

/**
 * Phi-3 (and Phi-4-mini): the Llama layout with q/k/v stored as one qkv_proj and gate/up as one gate_up_proj
 * (quantized and exported as stored), partial rotary embeddings, LongRoPE ("su" and "yarn" are its old names
 * here, as transformers reads them), and an optional sliding window on every layer.
 */
export const phi3: Family = {
  modelTypes: ['phi3'],
  honours: 'the Llama fields without biases; fused qkv_proj and gate_up_proj, partial_rotary_factor, longrope (su), sliding_window',
  parseConfig: (c) => {
    const cfg = llamaLayout(c, {
      defaultEps: 1e-5,
      biasFlags: false,
      partialRotary: true,
      ropeAliases: { su: 'longrope', yarn: 'longrope' },
    });
    return { ...cfg, fusedQkv: 'concat', fusedGateUp: true, slidingWindow: slidingWindows(c, cfg.numLayers, { qwen: false }) };
  },
  // llama.cpp's phi3 disables its sliding window (llama.cpp PR 13676)
  gguf: { arch: 'phi3', activation: 'silu', biases: 'none', capContextAtWindow: true },
};
