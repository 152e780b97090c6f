/** gptq-ts library API. */
export { loadModel, loadTokenizer, type BlockStream, type LoadedModel, type LoadOptions } from './models/load.js';
export {
  Decoder,
  disposeBlock,
  KvCache,
  linearGroups,
  type KvCacheType,
  type BlockWeights,
  type PreparedBlock,
  type LinearName,
} from './models/index.js';
export {
  LlamaTokenizer,
  HfTokenizer,
  renderChat,
  tokenizationWarning,
  type Tokenizer,
  type ChatMessage,
  type TokenizerKind,
} from './io/tokenizer.js';
export { readConfigJson } from './io/config.js';
export { FAMILIES, SUPPORTED_MODEL_TYPES, parseModelConfig, readModelConfig, type Family, type ModelConfig } from './models/index.js';
export { SafetensorsFile, SafetensorsModel, writeSafetensors } from './io/safetensors.js';
export { convertLlama2c, readLlama2c } from './io/llama2c.js';
export { pullStories15m } from './io/stories.js';
export { loadText, DATASETS } from './calib/datasets.js';
export { evaluate, referenceStates, type EvalOptions, type EvalResult, type ReferenceStates } from './eval/perplexity.js';
export { quantize, PIPELINE_DEFAULTS, type PipelineOptions, type PipelineSummary, type QuantizeRun } from './pipeline.js';
export {
  quantizeModel,
  QUANTIZE_REFERENCE,
  type QuantizeOptions,
  type QuantizeResult,
  type QuantizeTimings,
  type StageSeconds,
} from './quant/quantize-model.js';
export { gptq, GPTQ_REFERENCE, type GptqOptions } from './quant/gptq.js';
export { rtn } from './quant/rtn.js';
export { dequantize, type QuantizedLayer } from './quant/quantized-layer.js';
export { generate, type GenerateOptions, type GenerateResult, type StopReason } from './infer/generate.js';
export { getBackend, type Backend, type LinearKernel, type PackedLinearWeights, type ActivationPrecision } from './tensor/index.js';
export { packedWeights, packLayer, unpackLayer } from './formats/gptq-pack.js';
export { readGptqPacked, readGptqLinear } from './formats/gptq.js';
export { UserError } from './io/errors.js';
