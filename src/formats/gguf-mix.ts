import { fail } from '../io/errors.js';
import { ggufLayout, layerPrefix, linearGroups, linearShape, type ModelConfig } from '../models/index.js';
import { BLOCK_LAYOUTS, GGML_TYPES, type BlockType } from './ggml-blocks.js';

/**
 * llama-quantize's per-tensor type mixes (Q4_K_M: most linear layers Q4_K, some attn_v / ffn_down Q6_K, the head
 * Q6_K, ...), decided here once for the sweep, the writer and the tests. Read from llama.cpp's src/llama-quant.cpp
 * (the release node-llama-cpp ships): llama_ftype_get_default_type (the base type of each name),
 * llama_tensor_get_type (the outer rules: --token-embedding-type, --output-tensor-type, --pure, then the shape
 * fallback) and llama_tensor_get_type_impl (the mix's own rules), tensor_type_fallback (rows that are not whole
 * blocks) and tools/quantize/quantize.cpp's names (Q4_K is an alias of Q4_K_M, Q3_K of Q3_K_M, Q5_K of Q5_K_M).
 * Only the rules that can fire for a model we write are here: no experts (n_expert ≤ 1), no imatrix (GPTQ's
 * Hessians play its part; the has_imatrix branches are llama-quantize's plain-rounding guards).
 */

/** A tensor's type in the file: a block type we have a grid for, or float. */
export type GgufTensorType = BlockType | 'F32' | 'F16';

/** The llama-quantize names (ftypes) whose every chosen type we have a grid for. */
export const GGUF_MIXES = [
  'Q4_0',
  'Q4_1',
  'Q5_0',
  'Q5_1',
  'Q8_0',
  'Q2_K',
  'Q3_K_S',
  'Q3_K_M',
  'Q3_K_L',
  'Q4_K_S',
  'Q4_K_M',
  'Q5_K_S',
  'Q5_K_M',
  'Q6_K',
  'IQ4_NL',
] as const;
export type GgufMix = (typeof GGUF_MIXES)[number];

/** quantize.cpp's aliases: a K-quant without a size letter is its _M mix */
const ALIASES: Record<string, GgufMix> = { Q3_K: 'Q3_K_M', Q4_K: 'Q4_K_M', Q5_K: 'Q5_K_M' };

/**
 * llama-quantize names whose mixes need types we have no grid for (IQ2/IQ3/IQ1 and TQ types, IQ4_XS, MXFP4), or an
 * importance matrix (Q2_K_S: tensor_requires_imatrix): refused by name rather than written as something else.
 */
const UNSUPPORTED = [
  'Q2_K_S',
  'IQ4_XS',
  'IQ3_XXS',
  'IQ3_XS',
  'IQ3_S',
  'IQ3_M',
  'IQ2_XXS',
  'IQ2_XS',
  'IQ2_S',
  'IQ2_M',
  'IQ1_S',
  'IQ1_M',
  'TQ1_0',
  'TQ2_0',
  'MXFP4_MOE',
  'Q1_0',
  'Q2_0',
];

/** llama_ftype (llama.h): written as general.file_type, as llama-quantize does */
export const FTYPE_IDS: Record<GgufMix, number> = {
  Q4_0: 2,
  Q4_1: 3,
  Q8_0: 7,
  Q5_0: 8,
  Q5_1: 9,
  Q2_K: 10,
  Q3_K_S: 11,
  Q3_K_M: 12,
  Q3_K_L: 13,
  Q4_K_S: 14,
  Q4_K_M: 15,
  Q5_K_S: 16,
  Q5_K_M: 17,
  Q6_K: 18,
  IQ4_NL: 25,
};

/** A `--gguf-type` name, any case, with llama-quantize's aliases resolved; others refused by name. */
export function ggufMixOf(name: string): GgufMix {
  const t = name.toUpperCase();
  if (Object.hasOwn(ALIASES, t)) return ALIASES[t]!;
  if ((GGUF_MIXES as readonly string[]).includes(t)) return t as GgufMix;
  if (UNSUPPORTED.includes(t))
    fail(`--gguf-type ${name}: llama-quantize's ${t} needs types (or an importance matrix) that gptq-ts has no grid for`);
  return fail(`--gguf-type ${JSON.stringify(name)} is not one of ${[...GGUF_MIXES, ...Object.keys(ALIASES)].join(', ')}`);
}

/** llama_ftype_get_default_type: the type of every tensor the mix's rules leave alone. */
function baseType(mix: GgufMix): BlockType {
  return mix.replace(/_[SML]$/, '') as BlockType;
}

/** What `gptq quantize --gguf-type` asks for, as llama-quantize's flags. */
export interface GgufMixOptions {
  mix: GgufMix;
  /** --pure: every quantized tensor the base type (shape fallbacks still apply) */
  pure?: boolean;
  /** --output-tensor-type: the head (and a tied embedding) in this type, as given (no fallback) */
  outputType?: GgufTensorType;
  /** --token-embedding-type: the embedding in this type, as given */
  embeddingType?: GgufTensorType;
}

/** A tensor-type name for --output-tensor-type / --token-embedding-type (ggml's names, any case). */
export function tensorTypeOf(name: string, flag: string): GgufTensorType {
  const t = name.toUpperCase();
  if (t === 'F32' || t === 'F16' || Object.hasOwn(GGML_TYPES, t)) return t as GgufTensorType;
  return fail(`${flag} ${JSON.stringify(name)} is not one of F32, F16, ${Object.keys(GGML_TYPES).join(', ')}`);
}

/** The tensor categories llama-quant.cpp's tensor_get_category tells apart, by llama.cpp name. */
type Category = 'output' | 'token_embd' | 'attn_v' | 'attn_k' | 'attn_q' | 'attn_output' | 'ffn_up' | 'ffn_gate' | 'ffn_down' | 'other';

function categoryOf(name: string): Category {
  if (name === 'output.weight') return 'output';
  if (name === 'token_embd.weight') return 'token_embd';
  // category_is_attn_v: a fused attn_qkv counts as attn_v (and takes attn_v's rules: the ATTENTION_QKV branch of
  // llama_tensor_get_type_impl comes after the attn_v one and is never reached)
  if (name.includes('attn_qkv.weight') || name.includes('attn_v.weight')) return 'attn_v';
  if (name.includes('attn_k.weight')) return 'attn_k';
  if (name.includes('attn_q.weight')) return 'attn_q';
  if (name.includes('attn_output.weight')) return 'attn_output';
  if (name.includes('ffn_up')) return 'ffn_up';
  if (name.includes('ffn_gate')) return 'ffn_gate';
  if (name.includes('ffn_down')) return 'ffn_down';
  return 'other';
}

/** use_more_bits: the first and last eighth of the layers, and every third one between. */
const useMoreBits = (i: number, n: number): boolean =>
  i < Math.trunc(n / 8) || i >= Math.trunc((7 * n) / 8) || (i - Math.trunc(n / 8)) % 3 === 2;

interface ModelFacts {
  arch: string;
  nLayer: number;
  /** n_gqa(): query heads per kv head */
  nGqa: number;
  /** LLM_TYPE_70B: llama_quant_model_from_metadata's rule (llama, 80 layers, grouped-query attention) */
  is70B: boolean;
  tied: boolean;
}

/**
 * llama_tensor_get_type_impl for one tensor: the mix's choice before the shape fallback. `index` is llama.cpp's
 * running count of this category (i_attention_wv, i_ffn_down), which for one such tensor per layer is the layer.
 */
function mixRule(
  mix: GgufMix,
  base: BlockType,
  cat: Category,
  cols: number,
  index: number,
  m: ModelFacts,
  o: GgufMixOptions,
): GgufTensorType {
  const n = m.nLayer;
  const falcon = m.arch === 'falcon';
  if (cat === 'output' || (m.tied && cat === 'token_embd')) {
    if (o.outputType) return o.outputType;
    if (falcon || cols % BLOCK_LAYOUTS[base].size !== 0) return 'Q8_0';
    return base === 'Q8_0' ? base : 'Q6_K';
  }
  if (cat === 'token_embd') return base;
  if (cat === 'attn_v') {
    let t: BlockType = base;
    if (mix === 'Q2_K') t = m.nGqa >= 4 ? 'Q4_K' : 'Q3_K';
    else if (mix === 'Q3_K_M') t = index < 2 ? 'Q5_K' : 'Q4_K';
    else if (mix === 'Q3_K_L') t = 'Q5_K';
    else if (mix === 'IQ4_NL' && m.nGqa >= 4) t = 'Q5_K';
    else if ((mix === 'Q4_K_M' || mix === 'Q5_K_M') && useMoreBits(index, n)) t = 'Q6_K';
    else if (mix === 'Q4_K_S' && index < 4) t = 'Q5_K';
    // 70B: eight query heads share each attn_v, so it is small; more bits for little size
    if (m.is70B && (t === 'Q3_K' || t === 'Q4_K')) t = 'Q5_K';
    return t;
  }
  if (cat === 'ffn_down') {
    const i = index;
    if (mix === 'Q2_K') return 'Q3_K';
    if (mix === 'Q3_K_M') return i < Math.trunc(n / 16) ? 'Q5_K' : !falcon || useMoreBits(i, n) ? 'Q4_K' : 'Q3_K';
    if (mix === 'Q3_K_L') return falcon ? 'Q4_K' : 'Q5_K';
    if (mix === 'Q4_K_M') {
      if (falcon) return i < Math.trunc(n / 16) ? 'Q6_K' : useMoreBits(i, n) ? 'Q5_K' : 'Q4_K';
      return useMoreBits(i, n) ? 'Q6_K' : base;
    }
    // without an imatrix (has_imatrix is false for us: see the note at the top)
    if (mix === 'IQ4_NL' && i < Math.trunc(n / 8)) return 'Q5_K';
    if (mix === 'Q5_K_M' && useMoreBits(i, n)) return 'Q6_K';
    if (mix === 'Q4_K_S' && !falcon && i < Math.trunc(n / 8)) return 'Q5_K';
    return base;
  }
  if (cat === 'attn_output') {
    if (falcon) return mix === 'Q3_K_L' ? 'Q4_K' : base;
    if (mix === 'Q2_K') return 'Q3_K';
    if (mix === 'Q3_K_M') return 'Q4_K';
    if (mix === 'Q3_K_L') return 'Q5_K';
  }
  // attn_q / attn_k / ffn_gate / ffn_up change only for IQ mixes and experts, which are refused above
  return base;
}

/** tensor_type_fallback: a type whose blocks do not fit the rows falls back to a 32-block one, else F16. */
function fallback(type: GgufTensorType, cols: number): GgufTensorType {
  if (type === 'F32' || type === 'F16' || cols % BLOCK_LAYOUTS[type].size === 0) return type;
  const to: Partial<Record<BlockType, BlockType>> = { Q2_K: 'Q4_0', Q3_K: 'Q4_0', Q4_K: 'Q5_0', Q5_K: 'Q5_1', Q6_K: 'Q8_0' };
  const f = to[type] ?? type;
  return cols % BLOCK_LAYOUTS[f].size === 0 ? f : 'F16';
}

/** One quantizable tensor of the file and the type the mix gives it. */
export interface PlannedTensor {
  /** llama.cpp's name */
  name: string;
  /** the checkpoint tensor it is written from */
  source: string;
  /** elements per row (ne[0]) */
  cols: number;
  type: GgufTensorType;
  /** a linear layer (swept by GPTQ); else token_embd or output (rounded to nearest) */
  linear: boolean;
}

/**
 * The type llama-quantize would give each tensor it quantizes (2-D weights other than norms and learned positions:
 * tensor_allows_quantization), in file order, for this model and mix.
 */
export function planGgufTypes(cfg: ModelConfig, o: GgufMixOptions): PlannedTensor[] {
  const layout = ggufLayout(cfg);
  const base = baseType(o.mix);
  const tied = !layout.tensors.some((t) => t.name === 'output.weight');
  const facts: ModelFacts = {
    arch: layout.arch,
    nLayer: cfg.numLayers,
    nGqa: cfg.numHeads / cfg.numKvHeads,
    is70B: layout.arch === 'llama' && cfg.numLayers === 80 && cfg.numHeads !== cfg.numKvHeads,
    tied,
  };
  const counters = { attn_v: 0, ffn_down: 0 };
  const widths = linearColumns(cfg);
  const plan: PlannedTensor[] = [];
  for (const t of layout.tensors) {
    const cat = categoryOf(t.name);
    if (!t.linear && cat !== 'token_embd' && cat !== 'output') continue;
    const cols = cat === 'token_embd' || cat === 'output' ? cfg.hiddenSize : widths.get(t.source)!;
    let type: GgufTensorType;
    // llama_tensor_get_type: the two flags win outright, before the mix and the shape fallback
    if (cat === 'token_embd' && o.embeddingType) type = o.embeddingType;
    else if (cat === 'output' && o.outputType) type = o.outputType;
    else if (o.pure) type = fallback(base, cols);
    else {
      const index = cat === 'attn_v' || cat === 'ffn_down' ? counters[cat]++ : 0;
      type = fallback(mixRule(o.mix, base, cat, cols, index, facts, o), cols);
    }
    // an explicit type is taken as given (no fallback): llama-quantize then fails validating the rows it wrote
    if (type !== 'F32' && type !== 'F16' && cols % BLOCK_LAYOUTS[type].size !== 0)
      fail(`${t.name}: ${type} needs rows that are whole blocks of ${BLOCK_LAYOUTS[type].size}, not ${cols}`);
    plan.push({ name: t.name, source: t.source, cols, type, linear: Boolean(t.linear) });
  }
  return plan;
}

/** Each linear weight's input width, by its checkpoint name. */
function linearColumns(cfg: ModelConfig): Map<string, number> {
  const cols = new Map<string, number>();
  for (let l = 0; l < cfg.numLayers; l++)
    for (const n of linearGroups(cfg).flat()) cols.set(`${layerPrefix(cfg, l)}${n}.weight`, linearShape(cfg, n)[1]);
  return cols;
}
