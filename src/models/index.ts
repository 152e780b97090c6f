/** The model families and the decoder they share; everything outside models/ comes through here. */
export {
  checkTensorNames,
  Decoder,
  KvCache,
  type KvCacheType,
  LLAMA_LINEAR,
  linearGroups,
  linearShape,
  normShapes,
  readBlock,
  readBlockExtras,
  readLinear,
  readEmbedding,
  readFinal,
  readOuter,
  storedLinear,
  layerPrefix,
  blockLinearWeights,
  EMBED,
  FINAL_NORM,
  floatEmbedding,
  preparedBytes,
  disposeBlock,
  softcap,
} from './decoder.js';
export type { BlockWeights, Embedding, PreparedBlock, LinearName } from './decoder.js';
export type { ModelConfig } from './config.js';
export { ggufLayout, ggufUnsupported, type GgufArch, type GgufScalar, type GgufTensorSource } from './gguf-layout.js';
export { FAMILIES, SUPPORTED_MODEL_TYPES, familyOf, parseModelConfig, readModelConfig, type Family } from './registry.js';
