import type { Family } from './registry.js';
import { llamaLayout } from './llama.js';

/** Granite: the Llama layout with multipliers on the embeddings, each residual update, attention scores and logits. */
export const granite: Family = {
  modelTypes: ['granite'],
  honours: 'the Llama fields, embedding_multiplier, residual_multiplier, attention_multiplier, logits_scaling',
  parseConfig: (c) => ({
    ...llamaLayout(c, { defaultEps: 1e-6 }),
    embeddingScale: c.num('embedding_multiplier', 1),
    residualScale: c.num('residual_multiplier', 1),
    attentionScale: c.num('attention_multiplier', 1),
    logitsDivisor: c.num('logits_scaling', 1),
  }),
  gguf: {
    arch: 'granite',
    interleavedRope: true,
    activation: 'silu',
    biases: 'any',
    ropeFreqs: true,
    features: ['granite-scales'],
    attentionScale: (cfg) => cfg.attentionScale,
    metadata: (cfg) => ({
      logit_scale: { f32: cfg.logitsDivisor },
      residual_scale: { f32: cfg.residualScale },
      embedding_scale: { f32: cfg.embeddingScale },
      'attention.scale': { f32: cfg.attentionScale },
    }),
  },
};
