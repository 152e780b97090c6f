import { fail } from '../io/errors.js';
import type { RawTensor, TensorInfo, TensorReader } from '../io/safetensors.js';
import { GgufFile, PACKED_TYPES, packedFromBlocks, type GgufMetaEntry } from '../formats/gguf-read.js';
import type { PackedLinearWeights } from '../tensor/index.js';
import type { ModelConfig } from './config.js';
import { transpose } from '../tensor/ref.js';
import { ggufLayout, type GgufScalar, type GgufTensorSource } from './gguf-layout.js';
import { FAMILIES, parseModelConfig } from './registry.js';

/**
 * A llama.cpp GGUF file as one of our models: its architecture and metadata mapped back to a config.json that the
 * family's own strict parser reads, and its tensors presented under the checkpoint's names with our writer's
 * transforms undone (rotary row interleave, fused q/k/v regrouping, Gemma's 1 + w norms). The mapping is not a
 * second table: the config is checked by running our GGUF writer's layout (gguf-layout.ts) on it, which must give
 * back exactly the file's metadata keys and values and its tensor names, so a key we do not implement, a value we
 * would have written differently or a tensor we would not read is refused by name.
 */

/** The keys outside "<arch>." that carry no arithmetic: descriptions, provenance, llama-quantize's notes. */
const INERT_PREFIXES = ['general.', 'quantize.'];
/** general.* keys that would change how the file is read or run */
const GENERAL_READ = new Set(['general.architecture', 'general.alignment']);
const GENERAL_REFUSED = ['general.split', 'split.'];

/**
 * What config.json fields an architecture's metadata holds beyond the shapes every one has, and the values
 * llama.cpp assumes where the file is silent (its loader's defaults: llama-model.cpp, load_hparams).
 */
interface ArchReader {
  num(key: string, dflt?: number): number;
  opt(key: string): number | undefined;
  bool(key: string): boolean | undefined;
  has(tensor: string): boolean;
  ropeFreqs(): Float32Array | undefined;
}
/** the fields every architecture's config.json starts from (see readModel); undefined removes one */
type Base = Record<string, unknown>;
const ARCH_FIELDS: Record<string, (r: ArchReader, base: Base) => Record<string, unknown>> = {
  llama: (r) => ({
    attention_bias: r.has('blk.0.attn_q.bias'),
    mlp_bias: r.has('blk.0.ffn_up.bias'),
    ...llama3Rope(r),
  }),
  granite: (r) => ({
    attention_bias: r.has('blk.0.attn_q.bias'),
    mlp_bias: r.has('blk.0.ffn_up.bias'),
    embedding_multiplier: r.num('embedding_scale'),
    residual_multiplier: r.num('residual_scale'),
    attention_multiplier: r.num('attention.scale'),
    logits_scaling: r.num('logit_scale'),
    ...llama3Rope(r),
  }),
  olmo2: () => ({}),
  qwen2: () => ({}),
  qwen3: (r) => ({ attention_bias: r.has('blk.0.attn_q.bias') }),
  // partial rotary: llama.cpp rotates rope.dimension_count of each head's dimensions
  phi3: (r) => {
    const headDim = r.num('attention.key_length', r.num('embedding_length') / r.num('attention.head_count'));
    const rotated = r.opt('rope.dimension_count') ?? headDim;
    return rotated !== headDim ? { partial_rotary_factor: rotated / headDim } : {};
  },
  gemma: () => ({}),
  // the LayerNorm families name their fields as their own config.json does
  falcon: (r, b) => {
    const heads = b['num_attention_heads'] as number;
    const kv = b['num_key_value_heads'] as number;
    const twoNorms = r.has('blk.0.attn_norm_2.weight');
    // any storage of the fused qkv is the same model (the file holds q | k | v): the new architecture unless MQA
    const newArch = twoNorms || kv !== 1;
    return {
      ...layerNormFields(b, 'layer_norm_epsilon', r.num('attention.layer_norm_epsilon')),
      ffn_hidden_size: b['intermediate_size'],
      new_decoder_architecture: newArch,
      num_kv_heads: newArch ? kv : undefined,
      multi_query: kv === 1 && heads > 1,
      parallel_attn: true,
      num_ln_in_parallel_attn: newArch ? (twoNorms ? 2 : 1) : undefined,
      // llama.cpp's falcon computes GELU with the tanh approximation
      activation: 'gelu_new',
      bias: false,
      rope_theta: b['rope_theta'],
    };
  },
  gptneox: (r, b) => ({
    ...layerNormFields(b, 'layer_norm_eps', r.num('attention.layer_norm_epsilon')),
    intermediate_size: b['intermediate_size'],
    hidden_act: 'gelu_new',
    rotary_emb_base: b['rope_theta'],
    rotary_pct: r.num('rope.dimension_count') / (b['head_dim'] as number),
    use_parallel_residual: r.bool('use_parallel_residual') ?? true,
    attention_bias: r.has('blk.0.attn_qkv.bias'),
  }),
  gpt2: (r, b) => ({
    ...layerNormFields(b, 'layer_norm_epsilon', r.num('attention.layer_norm_epsilon')),
    n_embd: b['hidden_size'],
    n_head: b['num_attention_heads'],
    n_layer: b['num_hidden_layers'],
    n_inner: b['intermediate_size'],
    n_positions: b['max_position_embeddings'],
    hidden_size: undefined,
    num_attention_heads: undefined,
    num_hidden_layers: undefined,
    max_position_embeddings: undefined,
    activation_function: 'gelu_new',
  }),
  bloom: (r, b) => ({
    ...layerNormFields(b, 'layer_norm_epsilon', r.num('attention.layer_norm_epsilon')),
    seq_length: b['max_position_embeddings'],
    max_position_embeddings: undefined,
  }),
  gemma2: (r) => ({
    attn_logit_softcapping: r.num('attn_logit_softcapping'),
    final_logit_softcapping: r.num('final_logit_softcapping'),
    sliding_window: r.num('attention.sliding_window'),
    // llama.cpp's gemma2 slides on every other layer
    sliding_window_pattern: r.num('attention.sliding_window_pattern', 2),
  }),
  gemma3: (r) => ({
    final_logit_softcapping: r.opt('final_logit_softcapping') ?? null,
    sliding_window: r.num('attention.sliding_window'),
    // llama.cpp's gemma3: five sliding layers, then a global one; local RoPE base 10000
    sliding_window_pattern: r.num('attention.sliding_window_pattern', 6),
    rope_local_base_freq: r.num('rope.freq_base_swa', 10000),
  }),
};

/** The shapes of a LayerNorm family (no head_dim, kv heads or RMS epsilon of its own; ALiBi or its own RoPE keys). */
function layerNormFields(b: Base, epsKey: string, eps: number): Record<string, unknown> {
  return {
    head_dim: undefined,
    num_key_value_heads: undefined,
    intermediate_size: undefined,
    rms_norm_eps: undefined,
    rope_theta: undefined,
    [epsKey]: eps,
    tie_word_embeddings: b['tie_word_embeddings'],
  };
}

export const GGUF_ARCHITECTURES_READ = Object.keys(ARCH_FIELDS);

/** llama3 RoPE: llama.cpp's files hold only each frequency's divisor (rope_freqs); recover parameters that give them. */
function llama3Rope(r: ArchReader): Record<string, unknown> {
  const ratios = r.ropeFreqs();
  if (!ratios) return {};
  const theta = r.num('rope.freq_base', 10000);
  const dim = 2 * ratios.length;
  const factor = Math.max(...ratios);
  const wavelen = Array.from(ratios, (_, i) => 2 * Math.PI * theta ** ((2 * i) / dim));
  // between the two wavelengths the frequency is a blend: 1/ratio = (1 − s)/factor + s, s linear in 1/wavelength
  const medium = [...ratios.keys()].filter((i) => ratios[i]! > 1 + 1e-6 && ratios[i]! < factor * (1 - 1e-6));
  const s = (i: number): number => (1 / ratios[i]! - 1 / factor) / (1 - 1 / factor);
  let low = 1;
  let high = 4;
  let orig: number;
  if (medium.length >= 2) {
    // s = orig/((high − low)·λ) − low/(high − low): two points fix both with low = 1 (any scaling of all three is the same RoPE)
    const [a, b] = [medium[0]!, medium[medium.length - 1]!];
    const A = (s(a) - s(b)) / (1 / wavelen[a]! - 1 / wavelen[b]!);
    const B = s(a) - A / wavelen[a]!;
    high = 1 - 1 / B;
    orig = A * (high - low);
  } else if (medium.length === 1) {
    orig = wavelen[medium[0]!]! * (3 * s(medium[0]!) + 1);
  } else {
    // no blended frequency: any boundary between the unscaled and the scaled wavelengths
    const lastHigh = Math.max(0, ...wavelen.filter((_, i) => ratios[i]! <= 1 + 1e-6));
    const firstLow = Math.min(...wavelen.filter((_, i) => ratios[i]! > 1 + 1e-6));
    orig = Math.sqrt(4 * lastHigh * firstLow);
    low = 1;
  }
  return {
    rope_scaling: {
      rope_type: 'llama3',
      factor,
      low_freq_factor: low,
      high_freq_factor: high,
      original_max_position_embeddings: orig,
    },
  };
}

function sameValue(e: GgufMetaEntry, v: GgufScalar): boolean {
  if (typeof v === 'string' || typeof v === 'boolean') return e.value === v;
  if (typeof e.value !== 'number') return false;
  return 'u32' in v ? e.value === v.u32 : Math.fround(e.value) === Math.fround(v.f32);
}

const shownEntry = (e: GgufMetaEntry): string => (Array.isArray(e.value) ? `an array of ${e.value.length}` : JSON.stringify(e.value));

export interface GgufModel {
  file: GgufFile;
  cfg: ModelConfig;
  /** the file's tensors under the checkpoint's names, as the checkpoint held them */
  tensors: GgufTensors;
  /** the file's tensor (llama.cpp name) behind each checkpoint tensor */
  sources: ReadonlyMap<string, GgufTensorSource>;
}

/** A GGUF file as a model of one of our families, refusing by name whatever it would run differently. */
export function openGgufModel(path: string): GgufModel {
  const file = new GgufFile(path);
  try {
    return readModel(file);
  } catch (e) {
    file.close();
    throw e;
  }
}

function readModel(file: GgufFile): GgufModel {
  const path = file.path;
  const arch = file.string('general.architecture');
  if (arch === undefined) fail(`${path}: no general.architecture`);
  const fields = ARCH_FIELDS[arch];
  const family = FAMILIES.find((f) => f.gguf?.arch === arch);
  if (!fields || !family)
    fail(
      `${path}: llama.cpp architecture ${JSON.stringify(arch)} is not implemented (gptq-ts reads ${GGUF_ARCHITECTURES_READ.join(', ')})`,
    );
  for (const key of file.metadata.keys()) {
    if (GENERAL_REFUSED.some((p) => key.startsWith(p))) fail(`${path}: metadata ${key}: split GGUF files are not implemented`);
    if (key.startsWith(`${arch}.`) || key.startsWith('tokenizer.') || GENERAL_READ.has(key)) continue;
    if (!INERT_PREFIXES.some((p) => key.startsWith(p)))
      fail(`${path}: metadata ${key} is not implemented, refusing rather than running a different model`);
  }

  const defaulted = new Set<string>();
  const meta = (key: string): number | undefined => file.number(`${arch}.${key}`);
  const reader: ArchReader = {
    num: (key, dflt) => {
      const v = meta(key);
      if (v !== undefined) return v;
      if (dflt === undefined) fail(`${path}: missing metadata ${arch}.${key}`);
      defaulted.add(key);
      return dflt;
    },
    opt: meta,
    bool: (key) => file.bool(`${arch}.${key}`),
    has: (t) => file.tensors.has(t),
    ropeFreqs: () => (file.tensors.has('rope_freqs.weight') ? file.readFloat('rope_freqs.weight') : undefined),
  };
  const { num } = reader;
  const hidden = num('embedding_length');
  const heads = num('attention.head_count');
  const headDim = num('attention.key_length', hidden / heads);
  num('attention.value_length', headDim);
  num('rope.dimension_count', headDim);
  const embd = file.tensors.get('token_embd.weight');
  const id = (k: string): number | undefined => file.number(`tokenizer.ggml.${k}`);
  const json: Record<string, unknown> = {
    model_type: family.modelTypes[0],
    hidden_size: hidden,
    intermediate_size: num('feed_forward_length'),
    num_hidden_layers: num('block_count'),
    num_attention_heads: heads,
    num_key_value_heads: num('attention.head_count_kv', heads),
    head_dim: headDim,
    // llama.cpp has one token per embedding row
    vocab_size: num('vocab_size', embd?.shape[0] ?? file.array('tokenizer.ggml.tokens', 'string')?.length ?? 0),
    max_position_embeddings: num('context_length'),
    // LayerNorm architectures state attention.layer_norm_epsilon instead (read by their own fields below)
    rms_norm_eps: file.has(`${arch}.attention.layer_norm_epsilon`) ? undefined : num('attention.layer_norm_rms_epsilon'),
    rope_theta: num('rope.freq_base', 10000),
    tie_word_embeddings: !file.tensors.has('output.weight'),
    bos_token_id: id('bos_token_id') ?? null,
    eos_token_id: id('eos_token_id') ?? null,
  };
  if (file.string(`${arch}.rope.scaling.type`) === 'linear')
    json['rope_scaling'] = { rope_type: 'linear', factor: num('rope.scaling.factor') };
  Object.assign(json, fields(reader, { ...json }));
  for (const k of Object.keys(json)) if (json[k] === undefined) delete json[k];
  const where = `${path} (its metadata as config.json)`;
  let cfg = parseModelConfig(json, where);
  // Gemma 2/3: llama.cpp's attention scale is its own rule, which the family holds as query_pre_attn_scalar
  const scale = family.gguf?.attentionScale?.(cfg);
  if (scale !== undefined && Math.abs(scale - cfg.attentionScale) > 1e-7 * scale) {
    json['query_pre_attn_scalar'] = 1 / scale ** 2;
    cfg = parseModelConfig(json, where);
  }
  const layout = ggufLayout(cfg);

  // the file must hold what our writer writes for this config: same keys (or llama.cpp's default where absent), same values
  for (const [key, v] of Object.entries(layout.metadata)) {
    const e = file.metadata.get(`${arch}.${key}`);
    if (!e) {
      if (!defaulted.has(key)) fail(`${path}: missing metadata ${arch}.${key}`);
      continue;
    }
    if (!sameValue(e, v))
      fail(`${path}: metadata ${arch}.${key} ${shownEntry(e)} is not what gptq-ts runs for this model (${JSON.stringify(v)})`);
  }
  for (const key of file.metadata.keys()) {
    if (key.startsWith(`${arch}.`) && !Object.hasOwn(layout.metadata, key.slice(arch.length + 1)))
      fail(
        `${path}: metadata ${key} ${shownEntry(file.metadata.get(key)!)} is not implemented for ${arch}, refusing rather than running a different model`,
      );
  }
  const expected = new Set([...layout.tensors.map((t) => t.name), ...layout.generated.map((g) => g.name)]);
  for (const name of file.tensors.keys())
    if (!expected.has(name))
      fail(`${path}: tensor ${name} is not part of a ${cfg.numLayers}-layer ${arch} model as its metadata describes it`);
  for (const name of expected) if (!file.tensors.has(name)) fail(`${path}: missing tensor ${name}`);
  for (const g of layout.generated) {
    const stored = file.readFloat(g.name);
    const bad = g.data.findIndex((x, i) => !(Math.abs(x - stored[i]!) <= 1e-5 * Math.abs(x)));
    if (bad >= 0 || stored.length !== g.data.length)
      fail(
        `${path}: tensor ${g.name} (element ${bad}: ${stored[bad]}) is not the llama3 RoPE scaling gptq-ts recovers from it (${g.data[bad]})`,
      );
  }
  const sources = new Map(layout.tensors.map((t) => [t.source, t]));
  return { file, cfg, tensors: new GgufTensors(file, sources, cfg.transposedLinears), sources };
}

/** The file's tensors under the checkpoint's names, each as the checkpoint held it (float32). */
export class GgufTensors implements TensorReader {
  readonly dir: string;
  constructor(
    private readonly file: GgufFile,
    private readonly sources: ReadonlyMap<string, GgufTensorSource>,
    /** the checkpoint stores linear weights [in, out] (GPT-2's Conv1D); the file holds them [out, in] */
    private readonly transposed = false,
  ) {
    this.dir = file.path;
  }
  names(): string[] {
    return [...this.sources.keys()];
  }
  has(name: string): boolean {
    return this.sources.has(name);
  }
  private source(name: string): GgufTensorSource {
    const s = this.sources.get(name);
    if (!s) fail(`${this.dir}: missing tensor ${name}`);
    return s;
  }
  /** the shape the checkpoint holds: the file's, transposed for Conv1D linear weights */
  private shapeOf(s: GgufTensorSource): number[] {
    const shape = this.file.info(s.name).shape;
    return s.linear && this.transposed ? [...shape].reverse() : shape;
  }
  info(name: string): TensorInfo {
    const s = this.source(name);
    const t = this.file.info(s.name);
    return { name, dtype: 'F32', shape: this.shapeOf(s), offset: t.offset, byteLength: t.bytes, file: this.dir };
  }
  read(name: string): RawTensor {
    const shape = this.info(name).shape;
    return { dtype: 'F32', shape, data: this.readFloat(name, shape) };
  }
  readFloat(name: string, shape: number[]): Float32Array {
    const s = this.source(name);
    const t = this.file.info(s.name);
    const held = this.shapeOf(s);
    if (held.length !== shape.length || held.some((d, i) => d !== shape[i]))
      fail(`${this.dir}: tensor ${s.name} has shape [${held}] but its metadata implies [${shape}]`);
    let w = this.file.readFloat(s.name);
    if (s.rowOrder) {
      // file row i is the checkpoint's row rowOrder[i]
      const cols = t.shape.length === 2 ? t.shape[1]! : 1;
      const out = new Float32Array(w.length);
      s.rowOrder.forEach((src, i) => out.set(w.subarray(i * cols, (i + 1) * cols), src * cols));
      w = out;
    }
    // Gemma's norms: the file holds 1 + w, the decoder adds the 1 itself
    if (s.addOne) w = w.map((x) => x - 1);
    if (s.linear && this.transposed) w = transpose(w, t.shape[0]!, t.shape[1]!);
    const bad = w.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) fail(`${this.dir}: tensor ${s.name} contains NaN/Inf at element ${bad}`);
    return w;
  }
  /** whether tensor `name` is a linear layer (or the output head) held as Q4_0 / Q8_0: see packed() */
  isPacked(name: string): boolean {
    const s = this.source(name);
    const t = this.file.info(s.name);
    return Boolean(s.linear || s.head) && Boolean(PACKED_TYPES[t.typeName]) && t.shape.length === 2;
  }
  /**
   * A linear layer (or the output head) held as Q4_0 / Q8_0, as packed GPTQ weights in the checkpoint's row order;
   * undefined for other types.
   */
  packed(name: string): PackedLinearWeights | undefined {
    if (!this.isPacked(name)) return undefined;
    const s = this.source(name);
    const t = this.file.info(s.name);
    const order = s.rowOrder;
    return packedFromBlocks(t.typeName, this.file.readRaw(s.name), t.shape[0]!, t.shape[1]!, (i) => (order ? order[i]! : i));
  }

  /** Bytes the loaded model holds: packed linear layers (and head) as stored, every other tensor as float32. */
  loadedBytes(): number {
    let bytes = 0;
    for (const [name, s] of this.sources) {
      const t = this.file.info(s.name);
      bytes += this.isPacked(name) ? t.bytes : 4 * t.elements;
    }
    return bytes;
  }

  close(): void {
    this.file.close();
  }
}
