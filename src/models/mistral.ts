import type { Family } from './registry.js';
import { llamaLayout, slidingWindows } from './llama.js';

/** Mistral: the Llama layout with sliding-window attention (no biases). */
export const mistral: Family = {
  modelTypes: ['mistral'],
  honours: 'the Llama fields without biases, sliding_window (or layer_types)',
  parseConfig: (c) => {
    const cfg = llamaLayout(c, { defaultEps: 1e-6, defaultTheta: 10000, biasFlags: false });
    return { ...cfg, slidingWindow: slidingWindows(c, cfg.numLayers, { qwen: false }) };
  },
  // llama.cpp's converter writes Mistral as its llama architecture, which has no sliding window
  gguf: { arch: 'llama', interleavedRope: true, activation: 'silu', biases: 'none', ropeFreqs: true, capContextAtWindow: true },
};
