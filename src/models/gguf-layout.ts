import { fail } from '../io/errors.js';
import type { Activation } from '../tensor/index.js';
import { slidingWindowsOf, type BlockNorms, type ModelConfig } from './config.js';
import { layerPrefix, linearGroups, normShapes } from './decoder.js';
import { familyOf } from './registry.js';
import { ropeFrequencies } from './rope.js';

/**
 * How a model becomes llama.cpp's GGUF: the architecture its family maps to, llama.cpp's tensor names, the row
 * orders its graph expects, and the metadata its loader reads. Read from llama.cpp's own loaders
 * (src/models/<arch>.cpp: which tensors and keys each architecture reads) and its converter
 * (convert_hf_to_gguf.py: which rows it reorders and which values it shifts). A model that the architecture's graph
 * would compute differently is refused by name.
 */

/** A feature of our decoder that only some llama.cpp architectures compute. */
export type GgufFeature =
  | 'qk-norm-head'
  | 'qk-norm-full'
  | 'norm-offset'
  | 'post-norms'
  | 'parallel'
  | 'alibi'
  | 'embed-norm'
  | 'learned-positions'
  | 'attn-softcap'
  | 'final-softcap'
  | 'sliding-window'
  | 'granite-scales'
  | 'gemma-embedding-scale';

/** What a family declares about its llama.cpp architecture (the `gguf` field of a Family). */
export interface GgufArch {
  /** llama.cpp's architecture name */
  arch: string;
  /** q/k rows in llama.cpp's interleaved-pair rotary order (its LLAMA_ROPE_TYPE_NORM architectures) */
  interleavedRope?: boolean;
  /** the MLP activation its graph computes */
  activation: Activation;
  /** which linear biases its loader reads: any subset, q/k/v only, none, or all of them (required) */
  biases: 'any' | 'qkv' | 'none' | 'all';
  features?: readonly GgufFeature[];
  /** llama3 RoPE scaling as a rope_freqs tensor (its loader reads one) */
  ropeFreqs?: boolean;
  /** its graph has no sliding windows: the file's context is capped at the smallest window, where the two agree */
  capContextAtWindow?: boolean;
  /** the attention score scale its graph uses, where not 1/sqrt(head_dim) */
  attentionScale?(cfg: ModelConfig): number;
  /** the head: 'tied' (it always reads token_embd), 'untied' (it requires output.weight), or either */
  head?: 'tied' | 'untied';
  /** its own keys (without the "<arch>." prefix) */
  metadata?(cfg: ModelConfig): Record<string, GgufScalar>;
  /** llama.cpp names of block norms, where they differ from attn_norm / post_attention_norm / ffn_norm / post_ffw_norm */
  norms?(cfg: ModelConfig): Partial<Record<keyof BlockNorms, string>>;
  /** a family-specific reason this config is not what the architecture computes */
  unsupported?(cfg: ModelConfig): string | undefined;
}

export type GgufScalar = boolean | string | { u32: number } | { f32: number };

/** One tensor of the file: llama.cpp's name, the checkpoint tensor it comes from, and how its rows are laid out. */
export interface GgufTensorSource {
  name: string;
  source: string;
  /** GGUF row i is the source's row rowOrder[i] (rotary interleave, fused q/k/v regrouped as q | k | v) */
  rowOrder?: Int32Array;
  /** Gemma stores norms as w for (1 + w); llama.cpp's files hold 1 + w */
  addOne?: boolean;
  /** a linear layer's weight: written from its quantized layer ([out, in], whatever the checkpoint's layout) */
  linear?: boolean;
  /** the untied output head, [vocab, in] in every layout: read as a packed kernel where it is Q4_0/Q8_0 */
  head?: boolean;
}

export interface GgufLayout {
  arch: string;
  /** keys without the "<arch>." prefix */
  metadata: Record<string, GgufScalar>;
  tensors: GgufTensorSource[];
  /** tensors made here rather than read (llama3's rope_freqs) */
  generated: { name: string; data: Float32Array }[];
  /** what the user should know about the file (a capped context, an approximated activation) */
  notes: string[];
}

const LINEAR_NAMES: Record<string, string> = {
  q: 'attn_q',
  k: 'attn_k',
  v: 'attn_v',
  qkv: 'attn_qkv',
  o: 'attn_output',
  gate: 'ffn_gate',
  up: 'ffn_up',
  gateUp: 'ffn_up',
  down: 'ffn_down',
};

const NORM_NAMES: Record<keyof BlockNorms, string | undefined> = {
  attnIn: 'attn_norm',
  attnOut: 'post_attention_norm',
  mlpIn: 'ffn_norm',
  mlpOut: 'post_ffw_norm',
  attnResidual: undefined,
  mlpResidual: undefined,
};

/** The features of our decoder this config uses. */
function featuresOf(cfg: ModelConfig): GgufFeature[] {
  const f: GgufFeature[] = [];
  if (cfg.qkNorm === 'head') f.push('qk-norm-head');
  if (cfg.qkNorm === 'full') f.push('qk-norm-full');
  if (cfg.normOffset) f.push('norm-offset');
  if (cfg.norms.attnOut || cfg.norms.mlpOut) f.push('post-norms');
  if (cfg.parallel) f.push('parallel');
  if (cfg.alibi) f.push('alibi');
  if (cfg.tensors.embedNorm) f.push('embed-norm');
  if (cfg.tensors.positions) f.push('learned-positions');
  if (cfg.attnSoftcap !== undefined) f.push('attn-softcap');
  if (cfg.finalSoftcap !== undefined) f.push('final-softcap');
  if (slidingWindowsOf(cfg).length > 0) f.push('sliding-window');
  if (cfg.residualScale !== 1 || cfg.logitsDivisor !== 1) f.push('granite-scales');
  if (cfg.embeddingScale !== 1) f.push(cfg.normOffset ? 'gemma-embedding-scale' : 'granite-scales');
  return f;
}

const FEATURE_NAMES: Record<GgufFeature, string> = {
  'qk-norm-head': 'q/k norms per head',
  'qk-norm-full': 'q/k norms over the projection',
  'norm-offset': '(1 + w) norms',
  'post-norms': 'norms after attention and the MLP',
  parallel: 'parallel attention and MLP',
  alibi: 'ALiBi',
  'embed-norm': 'an embedding LayerNorm',
  'learned-positions': 'learned positions',
  'attn-softcap': 'attention soft-capping',
  'final-softcap': 'logit soft-capping',
  'sliding-window': 'sliding-window attention',
  'granite-scales': 'residual/embedding/logit multipliers',
  'gemma-embedding-scale': 'a sqrt(hidden) embedding scale',
};

function closeTo(a: number, b: number): boolean {
  return Math.abs(a - b) <= 1e-6 * Math.abs(b);
}

/** Why llama.cpp would compute this model differently, or undefined when its GGUF can be written exactly. */
function incompatibility(cfg: ModelConfig, g: GgufArch): string | undefined {
  for (const f of featuresOf(cfg)) {
    if (f === 'sliding-window' && g.capContextAtWindow) continue;
    if (!g.features?.includes(f)) return `llama.cpp's ${g.arch} has no ${FEATURE_NAMES[f]}`;
  }
  if (cfg.activation !== g.activation && !(cfg.activation === 'gelu' && g.activation === 'gelu_tanh'))
    return `llama.cpp's ${g.arch} computes ${g.activation}, not ${cfg.activation}`;
  const linears = linearGroups(cfg).flat();
  if (g.biases === 'none' && cfg.biases.size > 0) return `llama.cpp's ${g.arch} reads no linear biases`;
  if (g.biases === 'qkv' && [...cfg.biases].some((n) => n !== cfg.linear.q && n !== cfg.linear.k && n !== cfg.linear.v))
    return `llama.cpp's ${g.arch} reads biases of q, k and v only`;
  if (g.biases === 'all' && linears.some((n) => !cfg.biases.has(n))) return `llama.cpp's ${g.arch} needs a bias on every linear layer`;
  if (g.head === 'tied' && !cfg.tieWordEmbeddings) return `llama.cpp's ${g.arch} ties the output head to the embeddings`;
  if (g.head === 'untied' && cfg.tieWordEmbeddings) return `llama.cpp's ${g.arch} needs its own output head (the embeddings are tied)`;
  if (cfg.tensors.projectIn || cfg.tensors.projectOut) return 'embedding projections are not in any llama.cpp architecture';
  if (cfg.positionOffset && cfg.tensors.positions) return `learned positions with an offset of ${cfg.positionOffset}`;
  const rope = cfg.rope;
  if (rope) {
    if (rope.type !== 'default' && rope.type !== 'linear' && !(rope.type === 'llama3' && g.ropeFreqs))
      return `RoPE type ${rope.type} is not written to llama.cpp's ${g.arch}`;
  } else if (!cfg.alibi && !cfg.tensors.positions) return 'a model without positions';
  if (cfg.localRope && cfg.localRope.type !== 'default') return `a ${cfg.localRope.type} RoPE on sliding layers`;
  const scale = g.attentionScale?.(cfg) ?? 1 / Math.sqrt(cfg.headDim);
  if (!closeTo(cfg.attentionScale, scale))
    return `attention scaled by ${cfg.attentionScale} (llama.cpp's ${g.arch} scales by ${scale} here)`;
  const windows = slidingWindowsOf(cfg);
  if (g.features?.includes('sliding-window') && windows.length > 0) {
    if (swaPeriod(cfg) === undefined) return 'sliding-window layers that do not repeat with a period';
    if (new Set(windows).size > 1) return 'sliding windows of different sizes';
  }
  return g.unsupported?.(cfg);
}

/** Why this model cannot be written as llama.cpp's GGUF exactly, or undefined. */
export function ggufUnsupported(cfg: ModelConfig): string | undefined {
  const g = familyOf(cfg.modelType, 'GGUF export').gguf;
  return g ? incompatibility(cfg, g) : `llama.cpp has no architecture for model_type ${cfg.modelType}`;
}

/** llama.cpp's sliding-window pattern: layer l slides unless (l + 1) is a multiple of the period. */
function swaPeriod(cfg: ModelConfig): number | undefined {
  for (let p = 2; p <= cfg.numLayers + 1; p++) {
    let ok = true;
    for (let l = 0; l < cfg.numLayers && ok; l++) ok = (cfg.slidingWindow(l) !== undefined) === ((l + 1) % p !== 0);
    if (ok) return p;
  }
  return undefined;
}

/**
 * The GGUF layout of a model: llama.cpp's architecture, names, row orders and metadata. Refuses, naming the reason,
 * a model that llama.cpp's architecture would compute differently.
 */
export function ggufLayout(cfg: ModelConfig): GgufLayout {
  const why = ggufUnsupported(cfg);
  if (why) fail(`GGUF export: ${why}`);
  const g = familyOf(cfg.modelType, 'GGUF export').gguf!;
  const notes: string[] = [];
  const T = cfg.tensors;
  const tensors: GgufTensorSource[] = [];
  const bias = (weight: string): string => weight.replace(/weight$/, 'bias');
  const norm = (name: string, source: string): void => {
    tensors.push({ name: `${name}.weight`, source, ...(cfg.normOffset ? { addOne: true } : {}) });
    if (cfg.normKind === 'layer') tensors.push({ name: `${name}.bias`, source: bias(source) });
  };
  tensors.push({ name: 'token_embd.weight', source: T.embed });
  if (T.positions) tensors.push({ name: 'position_embd.weight', source: T.positions });
  if (T.embedNorm) norm('token_embd_norm', T.embedNorm);
  const qkvOrder = fusedQkvOrder(cfg);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = layerPrefix(cfg, l);
    const b = `blk.${l}.`;
    const seen = new Set<string>();
    for (const role of ['attnIn', 'attnOut', 'mlpIn', 'mlpOut', 'attnResidual', 'mlpResidual'] as const) {
      const name = cfg.norms[role];
      if (!name || seen.has(name)) continue;
      seen.add(name);
      const gguf = g.norms?.(cfg)[role] ?? NORM_NAMES[role];
      if (!gguf) fail(`llama.cpp's ${g.arch} has no norm of the residual stream (${name})`);
      norm(b + gguf, `${p}${name}.weight`);
    }
    for (const [name] of normShapes(cfg).filter(([n]) => n === 'self_attn.q_norm' || n === 'self_attn.k_norm'))
      norm(b + (name === 'self_attn.q_norm' ? 'attn_q_norm' : 'attn_k_norm'), `${p}${name}.weight`);
    for (const role of linearRoles(cfg)) {
      const name = cfg.linear[role]!;
      const rowOrder = role === 'qkv' ? qkvOrder : g.interleavedRope && (role === 'q' || role === 'k') ? interleaved(cfg, role) : undefined;
      const src = `${p}${name}.weight`;
      tensors.push({ name: `${b}${LINEAR_NAMES[role]}.weight`, source: src, linear: true, ...(rowOrder ? { rowOrder } : {}) });
      if (cfg.biases.has(name))
        tensors.push({ name: `${b}${LINEAR_NAMES[role]}.bias`, source: bias(src), ...(rowOrder ? { rowOrder } : {}) });
    }
  }
  if (T.finalNorm) norm('output_norm', T.finalNorm);
  if (!cfg.tieWordEmbeddings) tensors.push({ name: 'output.weight', source: T.head, head: true });

  const u32 = (v: number): GgufScalar => ({ u32: v });
  const f32 = (v: number): GgufScalar => ({ f32: v });
  const windows = slidingWindowsOf(cfg);
  let context = cfg.maxPositions;
  if (windows.length && g.capContextAtWindow) {
    const w = Math.min(...windows);
    if (w < context) {
      notes.push(
        `llama.cpp's ${g.arch} has no sliding window: the file's context_length is the window, ${w} (not ${cfg.maxPositions}), within which the two agree`,
      );
      context = w;
    }
  }
  const metadata: Record<string, GgufScalar> = {
    context_length: u32(context),
    embedding_length: u32(cfg.hiddenSize),
    block_count: u32(cfg.numLayers),
    feed_forward_length: u32(cfg.intermediateSize),
    vocab_size: u32(cfg.vocabSize),
    'attention.head_count': u32(cfg.numHeads),
    'attention.head_count_kv': u32(cfg.numKvHeads),
    'attention.key_length': u32(cfg.headDim),
    'attention.value_length': u32(cfg.headDim),
    [cfg.normKind === 'rms' ? 'attention.layer_norm_rms_epsilon' : 'attention.layer_norm_epsilon']: f32(cfg.rmsNormEps),
  };
  const generated: GgufLayout['generated'] = [];
  const rope = cfg.rope;
  if (rope) {
    metadata['rope.dimension_count'] = u32(rope.dim);
    metadata['rope.freq_base'] = f32(rope.theta);
    if (rope.type === 'linear') {
      metadata['rope.scaling.type'] = 'linear';
      metadata['rope.scaling.factor'] = f32(rope.factor);
    }
    if (rope.type === 'llama3') {
      // llama.cpp divides each frequency by its factor: the unscaled frequencies over the scaled ones
      const base = ropeFrequencies({ ...rope, type: 'default' }, 0).invFreq;
      const scaled = ropeFrequencies(rope, 0).invFreq;
      generated.push({ name: 'rope_freqs.weight', data: base.map((f, i) => f / scaled[i]!) });
    }
  }
  if (cfg.localRope) metadata['rope.freq_base_swa'] = f32(cfg.localRope.theta);
  if (windows.length && !g.capContextAtWindow) {
    metadata['attention.sliding_window'] = u32(windows[0]!);
    metadata['attention.sliding_window_pattern'] = u32(swaPeriod(cfg)!);
  }
  if (cfg.attnSoftcap !== undefined) metadata['attn_logit_softcapping'] = f32(cfg.attnSoftcap);
  if (cfg.finalSoftcap !== undefined) metadata['final_logit_softcapping'] = f32(cfg.finalSoftcap);
  Object.assign(metadata, g.metadata?.(cfg));
  if (cfg.activation === 'gelu' && g.activation === 'gelu_tanh')
    notes.push(`llama.cpp's ${g.arch} computes GELU with the tanh approximation; this model's GELU is erf's (they differ by under 1e-3)`);
  return { arch: g.arch, metadata, tensors, generated, notes };
}

type LinearRole = 'q' | 'k' | 'v' | 'qkv' | 'o' | 'gate' | 'up' | 'gateUp' | 'down';

function linearRoles(cfg: ModelConfig): LinearRole[] {
  const attention: LinearRole[] = cfg.fusedQkv !== 'none' ? ['qkv'] : ['q', 'k', 'v'];
  const mlp: LinearRole[] = cfg.fusedGateUp ? ['gateUp'] : cfg.mlp === 'gated' ? ['gate', 'up'] : ['up'];
  return [...attention, 'o', ...mlp, 'down'];
}

/** llama.cpp's rotary layout for NORM architectures is Meta's interleaved pairs: undo Hugging Face's per-head halves. */
function interleaved(cfg: ModelConfig, role: 'q' | 'k'): Int32Array {
  const heads = role === 'q' ? cfg.numHeads : cfg.numKvHeads;
  const hd = cfg.headDim;
  const order = new Int32Array(heads * hd);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < hd / 2; i++) {
      order[h * hd + 2 * i] = h * hd + i;
      order[h * hd + 2 * i + 1] = h * hd + hd / 2 + i;
    }
  }
  return order;
}

/**
 * llama.cpp reads a fused qkv as q | k | v: regroup the per-kv-group layout (Falcon's new architecture: each kv
 * head's query heads, then its k and v) and the per-head one (BLOOM, GPT-NeoX: the same with a group per head).
 */
function fusedQkvOrder(cfg: ModelConfig): Int32Array | undefined {
  if (cfg.fusedQkv !== 'per-head' && cfg.fusedQkv !== 'grouped') return undefined;
  const { headDim: hd, numHeads: H, numKvHeads: KV } = cfg;
  const group = H / KV + 2;
  const order = new Int32Array((H + 2 * KV) * hd);
  let o = 0;
  const take = (g: number, j: number): void => {
    for (let d = 0; d < hd; d++) order[o++] = (g * group + j) * hd + d;
  };
  for (let g = 0; g < KV; g++) for (let j = 0; j < group - 2; j++) take(g, j);
  for (let g = 0; g < KV; g++) take(g, group - 2);
  for (let g = 0; g < KV; g++) take(g, group - 1);
  return order;
}
