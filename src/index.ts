/** gptq-ts library API. */
export { loadModel, loadTokenizer } from './models/load.js';
export { Llama, KvCache, LINEAR_GROUPS, type BlockWeights, type LinearName } from './models/llama.js';
export { LlamaTokenizer } from './io/tokenizer.js';
export { parseLlamaConfig, readConfigJson, type LlamaConfig } from './io/config.js';
export { SafetensorsFile, SafetensorsModel, writeSafetensors } from './io/safetensors.js';
export { convertLlama2c, readLlama2c } from './io/llama2c.js';
export { pullStories15m } from './io/stories.js';
export { loadText, DATASETS } from './calib/datasets.js';
export { evaluate, referenceStates, type EvalOptions, type EvalResult, type ReferenceStates } from './eval/perplexity.js';
export { quantize, type PipelineOptions, type PipelineSummary } from './pipeline.js';
export { quantizeModel, type QuantizeOptions, type QuantizeResult } from './quant/quantize-model.js';
export { gptq, GPTQ_DEFAULTS, type GptqOptions } from './quant/gptq.js';
export { rtn } from './quant/rtn.js';
export { dequantize, type QuantizedLayer } from './quant/quantized-layer.js';
export { generate, type GenerateOptions, type GenerateResult } from './infer/generate.js';
export { getBackend, type Backend } from './tensor/index.js';
export { UserError } from './io/errors.js';
