import { fail, shown } from '../io/errors.js';
import type { Activation } from '../tensor/index.js';
import type { RopeConfig } from './rope.js';

/**
 * The decoder's view of a model: what the forward pass, the quantizer and the writers need, in one normalised
 * form whatever the family's config.json calls it. A family file maps its config.json onto this (see registry.ts).
 */
export interface ModelConfig {
  /** config.json's model_type */
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  /** the context the model is run at: positions 0..maxPositions-1 */
  maxPositions: number;
  rmsNormEps: number;
  /** rotary embeddings; undefined where positions are learned (OPT) */
  rope: RopeConfig | undefined;
  tieWordEmbeddings: boolean;
  bosTokenId: number | undefined;
  /** generation ends at any of these */
  eosTokenIds: number[];
  /** the gated MLP's activation: act(gate·x) ⊙ up·x */
  activation: Activation;
  /**
   * q/k/v stored as one layer (quantized and exported as stored): its output columns are q | k | v (Phi-3), per
   * head q_h | k_h | v_h (BLOOM, GPT-NeoX), or per kv head its query heads then k, v (Falcon's new architecture)
   */
  fusedQkv: 'none' | 'concat' | 'per-head' | 'grouped';
  /** gate/up stored as one layer, gate | up (Phi-3) */
  fusedGateUp: boolean;
  /** linear weights stored [in, out] (GPT-2's Conv1D); the decoder and the quantizer use them [out, in] */
  transposedLinears: boolean;
  /** attention and the MLP both read the block's input; their outputs are added together (GPT-NeoX, Falcon) */
  parallel: boolean;
  /** ALiBi: each head adds slope·(key position) to its scores, instead of rotating q and k (BLOOM) */
  alibi: boolean;
  tensors: TensorLayout;
  linear: LinearRoles;
  /** act(gate·x) ⊙ up·x, or plain act(up·x) (OPT's fc1) */
  mlp: 'gated' | 'plain';
  normKind: 'rms' | 'layer';
  /** learned positions: position p reads row p + offset of the position table (OPT's 2) */
  positionOffset: number | undefined;
  /** the embedding's width (OPT-350m's word_embed_proj_dim; else hidden_size) */
  embedDim: number;
  /** linear layers (names as in LinearName) that carry a bias */
  biases: ReadonlySet<string>;
  /** RMSNorm of q and k before RoPE: per head over head_dim (Qwen3, Gemma 3), or over the whole projection (OLMo2) */
  qkNorm: 'none' | 'head' | 'full';
  /** the block's RMSNorms by tensor name: of attention's and the MLP's input, and of their outputs before the residual add */
  norms: BlockNorms;
  /** Gemma's RMSNorms scale by (1 + weight) */
  normOffset: boolean;
  /** Gemma 2's soft-capping, cap·tanh(x/cap), of attention scores and of the logits */
  attnSoftcap: number | undefined;
  finalSoftcap: number | undefined;
  /** Gemma 3: the RoPE of sliding-window layers, where it differs from the global one */
  localRope: RopeConfig | undefined;
  /** attention sees at most this many past positions (itself included) at each layer; undefined = all */
  slidingWindow: (layer: number) => number | undefined;
  /** Granite's multipliers (1 elsewhere): embeddings ×, each residual update ×, attention scores ×, logits ÷ */
  embeddingScale: number;
  residualScale: number;
  /** attention score scale; 1/sqrt(headDim) unless the family says otherwise */
  attentionScale: number;
  logitsDivisor: number;
}

/** What every family states; the rest of ModelConfig has a default (see decoderConfig). */
type Required_ =
  | 'modelType'
  | 'hiddenSize'
  | 'intermediateSize'
  | 'numLayers'
  | 'numHeads'
  | 'numKvHeads'
  | 'headDim'
  | 'vocabSize'
  | 'maxPositions'
  | 'rmsNormEps'
  | 'tieWordEmbeddings'
  | 'bosTokenId'
  | 'eosTokenIds'
  | 'activation'
  | 'tensors'
  | 'linear'
  | 'norms';

/**
 * A family's config with the plain decoder's choices for everything it does not state: no RoPE, no fused layers,
 * a gated MLP and RMSNorm, sequential blocks, no biases, no extra norms, caps, windows or multipliers, and
 * attention scaled by 1/sqrt(head_dim).
 */
/** The windows of the model's sliding-window layers, in layer order (empty when no layer slides). */
export function slidingWindowsOf(cfg: ModelConfig): number[] {
  return Array.from({ length: cfg.numLayers }, (_, l) => cfg.slidingWindow(l)).filter((w): w is number => w !== undefined);
}

export function decoderConfig(c: Pick<ModelConfig, Required_> & Partial<ModelConfig>): ModelConfig {
  return {
    rope: undefined,
    fusedQkv: 'none',
    fusedGateUp: false,
    parallel: false,
    transposedLinears: false,
    alibi: false,
    mlp: 'gated',
    normKind: 'rms',
    positionOffset: undefined,
    embedDim: c.hiddenSize,
    biases: new Set(),
    qkNorm: 'none',
    normOffset: false,
    attnSoftcap: undefined,
    finalSoftcap: undefined,
    localRope: undefined,
    slidingWindow: () => undefined,
    embeddingScale: 1,
    residualScale: 1,
    attentionScale: 1 / Math.sqrt(c.headDim),
    logitsDivisor: 1,
    ...c,
  };
}

export interface BlockNorms {
  attnIn?: string;
  attnOut?: string;
  mlpIn?: string;
  mlpOut?: string;
  /** OPT's post-norm: the residual stream itself is normed after attention's / the MLP's add */
  attnResidual?: string;
  mlpResidual?: string;
}

/** A block's linear layers by role: tensor names after the layer prefix (qkv/gateUp where stored fused). */
export interface LinearRoles {
  q: string;
  k: string;
  v: string;
  o: string;
  gate?: string;
  up: string;
  down: string;
  qkv?: string;
  gateUp?: string;
}

/** Tensor names outside the blocks, and the blocks' prefix (followed by the layer number and a dot). */
export interface TensorLayout {
  embed: string;
  /** learned position embeddings (OPT) */
  positions?: string;
  /** a LayerNorm of the embeddings (BLOOM) */
  embedNorm?: string;
  projectIn?: string;
  projectOut?: string;
  finalNorm?: string;
  head: string;
  layers: string;
}

export const ACTIVATIONS: Record<string, Activation> = {
  silu: 'silu',
  swish: 'silu',
  gelu: 'gelu',
  gelu_pytorch_tanh: 'gelu_tanh',
  gelu_new: 'gelu_tanh',
  gelu_fast: 'gelu_tanh',
  relu: 'relu',
};

/**
 * Keys every transformers config may carry that do not change the forward pass (bookkeeping, training, generation
 * defaults, parallelism plans). A key that is neither one of these nor read by the family is refused by name.
 */
const INERT_KEYS = new Set([
  'architectures',
  'model_type',
  'transformers_version',
  'torch_dtype',
  'dtype',
  '_name_or_path',
  'name_or_path',
  'auto_map',
  'use_cache',
  'initializer_range',
  'pad_token_id',
  'sep_token_id',
  'decoder_start_token_id',
  'output_attentions',
  'output_hidden_states',
  'return_dict',
  'problem_type',
  'id2label',
  'label2id',
  'tokenizer_class',
  'task_specific_params',
  'is_encoder_decoder',
  'is_decoder',
  'add_cross_attention',
  'chunk_size_feed_forward',
  'tie_encoder_decoder',
  'finetuning_task',
  'prefix',
  'attention_dropout',
  'dropout',
  'activation_dropout',
  'layerdrop',
  'init_std',
  'classifier_dropout',
  'attn_pdrop',
  'hidden_dropout',
  'embd_pdrop',
  'resid_pdrop',
  'pretraining_tp',
  'quantization_config',
  'base_model_tp_plan',
  'base_model_pp_plan',
  'keys_to_ignore_at_inference',
  'attn_implementation',
  '_attn_implementation_autoset',
  'use_return_dict',
  'torchscript',
  'pruned_heads',
  'max_length',
  'min_length',
  'do_sample',
  'early_stopping',
  'num_beams',
  'temperature',
  'top_k',
  'top_p',
  'typical_p',
  'repetition_penalty',
  'length_penalty',
  'no_repeat_ngram_size',
  'bad_words_ids',
  'num_return_sequences',
  'output_scores',
  'return_dict_in_generate',
  'forced_bos_token_id',
  'forced_eos_token_id',
  'remove_invalid_values',
  'diversity_penalty',
  'num_beam_groups',
  'exponential_decay_length_penalty',
  'suppress_tokens',
  'begin_suppress_tokens',
  'encoder_no_repeat_ngram_size',
  'tf_legacy_loss',
  'use_bfloat16',
  'cross_attention_hidden_size',
]);

/**
 * Reads a config.json strictly: each value is checked where it is read, and `finish` refuses every key that was
 * neither read nor known to be inert, so a field that would change the arithmetic is never silently ignored.
 */
export class ConfigReader {
  private readonly read = new Set<string>();
  constructor(
    readonly raw: Record<string, unknown>,
    readonly where: string,
  ) {}

  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  /** the raw value, marked as read */
  value(key: string): unknown {
    this.read.add(key);
    return this.raw[key];
  }

  int(key: string, dflt?: number): number {
    const v = this.value(key) ?? dflt;
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) fail(`${this.where}: ${key} must be a positive integer, got ${shown(v)}`);
    return v;
  }

  num(key: string, dflt?: number): number {
    const v = this.value(key) ?? dflt;
    if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) fail(`${this.where}: ${key} must be a positive number, got ${shown(v)}`);
    return v;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.value(key) ?? dflt;
    if (typeof v !== 'boolean') fail(`${this.where}: ${key} must be true or false, got ${shown(v)}`);
    return v;
  }

  str(key: string, dflt: string): string {
    const v = this.value(key) ?? dflt;
    if (typeof v !== 'string') fail(`${this.where}: ${key} must be a string, got ${shown(v)}`);
    return v;
  }

  /** A field accepted only at the value(s) the forward pass implements: anything else is refused by name. */
  only(key: string, allowed: unknown[], why: string): void {
    const v = this.value(key);
    if (v !== undefined && !allowed.some((a) => JSON.stringify(a) === JSON.stringify(v))) {
      fail(`${this.where}: ${key} ${shown(v)} is not supported (${why})`);
    }
  }

  /** token id(s): a number or a list of numbers */
  ids(key: string): number[] {
    const v = this.value(key);
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    for (const id of list)
      if (!Number.isInteger(id) || id < 0) fail(`${this.where}: ${key} must be a token id or a list of them, got ${shown(v)}`);
    return list as number[];
  }

  /** Refuse any key that was not read and is not inert. */
  finish(): void {
    // a null value is transformers' "not set": the default, which is what we run
    const unknown = Object.keys(this.raw).filter((k) => !this.read.has(k) && !INERT_KEYS.has(k) && this.raw[k] !== null);
    if (unknown.length > 0) {
      const fields = unknown.map((k) => `${k}=${shown(this.raw[k])}`).join(', ');
      fail(
        `${this.where}: ${fields}: not implemented for model_type ${shown(this.raw['model_type'])}, refusing rather than running a different model`,
      );
    }
  }
}
