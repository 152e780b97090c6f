import { fail, shown } from '../io/errors.js';
import type { ConfigReader } from './config.js';

/**
 * Rotary position embeddings and their context-extension variants, as transformers' modeling_rope_utils.py
 * computes them: inverse frequencies per type, and an attention factor that scales cos and sin.
 */
export interface RopeConfig {
  type: 'default' | 'linear' | 'dynamic' | 'llama3' | 'yarn' | 'longrope';
  theta: number;
  /** rotated dimensions per head (head_dim unless a partial rotary factor says less) */
  dim: number;
  factor: number;
  /** the positions the model was pretrained on (llama3, yarn, longrope) */
  originalMaxPositions: number;
  /** max_position_embeddings: dynamic NTK scales beyond it */
  maxPositions: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  betaFast: number;
  betaSlow: number;
  truncate: boolean;
  attentionFactor: number | undefined;
  mscale: number | undefined;
  mscaleAllDim: number | undefined;
  shortFactor: number[];
  longFactor: number[];
}

const TYPES = ['default', 'linear', 'dynamic', 'llama3', 'yarn', 'longrope'] as const;

/** The keys each type reads from its parameters (anything else in them is refused). */
const KEYS: Record<RopeConfig['type'], string[]> = {
  default: [],
  linear: ['factor'],
  dynamic: ['factor'],
  llama3: ['factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'],
  yarn: [
    'factor',
    'original_max_position_embeddings',
    'beta_fast',
    'beta_slow',
    'attention_factor',
    'mscale',
    'mscale_all_dim',
    'truncate',
  ],
  longrope: ['factor', 'original_max_position_embeddings', 'short_factor', 'long_factor', 'attention_factor'],
};

/**
 * RoPE settings from either layout: transformers 5's `rope_parameters` (rope_theta inside) or the older
 * `rope_theta` + `rope_scaling`; `type` and `rope_type` both name the type.
 */
export function readRope(
  c: ConfigReader,
  headDim: number,
  maxPositions: number,
  o: {
    defaultTheta?: number;
    aliases?: Record<string, RopeConfig['type']>;
    /** parameters the family has already picked out (Gemma 3's per-layer-type RoPE) */
    params?: Record<string, unknown>;
  } = {},
): RopeConfig {
  const params = (o.params ?? c.value('rope_parameters') ?? c.value('rope_scaling') ?? {}) as Record<string, unknown>;
  if (typeof params !== 'object' || Array.isArray(params)) fail(`${c.where}: rope_parameters must be an object, got ${shown(params)}`);
  const topTheta = o.params ? undefined : c.value('rope_theta');
  const named = (params['rope_type'] ?? params['type'] ?? 'default') as string;
  const type = (o.aliases?.[named] ?? named) as RopeConfig['type'];
  if (!TYPES.includes(type)) fail(`${c.where}: rope type ${shown(type)} is not supported (supported: ${TYPES.join(', ')})`);
  const known = new Set(['rope_type', 'type', 'rope_theta', 'partial_rotary_factor', ...KEYS[type]]);
  for (const k of Object.keys(params))
    if (!known.has(k) && params[k] !== null) fail(`${c.where}: rope ${type} parameter ${k}=${shown(params[k])} is not supported`);
  const num = (key: string, dflt?: number): number => {
    const v = params[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) fail(`${c.where}: rope ${type} needs a number ${key}, got ${shown(v)}`);
    return v;
  };
  const opt = (key: string): number | undefined => (params[key] == null ? undefined : num(key));
  const list = (key: string): number[] => {
    const v = params[key];
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'number')) fail(`${c.where}: rope ${type} needs a list of numbers ${key}`);
    return v as number[];
  };
  const theta = num('rope_theta', (topTheta as number | undefined) ?? o.defaultTheta ?? 10000);
  const topPartial = c.value('partial_rotary_factor');
  if (topPartial != null && params['partial_rotary_factor'] != null && topPartial !== params['partial_rotary_factor']) {
    fail(
      `${c.where}: partial_rotary_factor ${shown(topPartial)} disagrees with rope_parameters' ${shown(params['partial_rotary_factor'])}`,
    );
  }
  const partial = (params['partial_rotary_factor'] ?? topPartial ?? 1) as number;
  if (typeof partial !== 'number' || !(partial > 0 && partial <= 1))
    fail(`${c.where}: partial_rotary_factor must be in (0, 1], got ${shown(partial)}`);
  const dim = Math.trunc(headDim * partial);
  if (dim % 2 !== 0 || dim <= 0)
    fail(`${c.where}: partial_rotary_factor ${partial} gives ${dim} rotated dimensions, not a positive even number`);
  // transformers reads a top-level original_max_position_embeddings first where one is present (Phi-3)
  const topOriginal = c.value('original_max_position_embeddings') as number | undefined;
  const rope: RopeConfig = {
    type,
    theta,
    dim,
    factor: type === 'default' ? 1 : type === 'longrope' || type === 'yarn' ? (opt('factor') ?? NaN) : num('factor'),
    originalMaxPositions: topOriginal ?? opt('original_max_position_embeddings') ?? maxPositions,
    maxPositions,
    lowFreqFactor: type === 'llama3' ? num('low_freq_factor') : 1,
    highFreqFactor: type === 'llama3' ? num('high_freq_factor') : 1,
    betaFast: opt('beta_fast') || 32,
    betaSlow: opt('beta_slow') || 1,
    truncate: params['truncate'] !== false,
    attentionFactor: opt('attention_factor'),
    mscale: opt('mscale'),
    mscaleAllDim: opt('mscale_all_dim'),
    shortFactor: type === 'longrope' ? list('short_factor') : [],
    longFactor: type === 'longrope' ? list('long_factor') : [],
  };
  if (Number.isNaN(rope.factor)) rope.factor = maxPositions / rope.originalMaxPositions;
  if (type === 'longrope' && (rope.shortFactor.length !== dim / 2 || rope.longFactor.length !== dim / 2)) {
    fail(`${c.where}: longrope short_factor and long_factor need ${dim / 2} entries each`);
  }
  // every one of these divides or takes a logarithm somewhere: zero or negative values make NaN frequencies
  const positive: [string, number | undefined][] = [
    ['rope_theta', rope.theta],
    ['factor', rope.factor],
    ['original_max_position_embeddings', rope.originalMaxPositions],
    ['low_freq_factor', rope.lowFreqFactor],
    ['high_freq_factor', rope.highFreqFactor],
    ['beta_fast', rope.betaFast],
    ['beta_slow', rope.betaSlow],
    ['attention_factor', rope.attentionFactor],
    ['mscale', rope.mscale],
    ['mscale_all_dim', rope.mscaleAllDim],
    ...rope.shortFactor.map((f): [string, number] => ['short_factor', f]),
    ...rope.longFactor.map((f): [string, number] => ['long_factor', f]),
  ];
  for (const [key, v] of positive) if (v !== undefined && !(v > 0)) fail(`${c.where}: rope ${key} must be positive, got ${v}`);
  if (type === 'llama3' && rope.highFreqFactor <= rope.lowFreqFactor) {
    fail(`${c.where}: rope high_freq_factor ${rope.highFreqFactor} must exceed low_freq_factor ${rope.lowFreqFactor}`);
  }
  return rope;
}

/** Float32 inverse frequencies base^(-2i/dim), as torch computes them. */
function baseInvFreq(theta: number, dim: number): Float32Array {
  const f = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) f[i] = 1 / Math.fround(theta ** Math.fround((2 * i) / dim));
  return f;
}

/** Inverse frequencies and the cos/sin factor for a forward whose last position is seqLen - 1. */
export function ropeFrequencies(r: RopeConfig, seqLen: number): { invFreq: Float32Array; scale: number } {
  const d = r.dim;
  switch (r.type) {
    case 'default':
      return { invFreq: baseInvFreq(r.theta, d), scale: 1 };
    case 'linear':
      return { invFreq: baseInvFreq(r.theta, d).map((f) => f / r.factor), scale: 1 };
    case 'dynamic': {
      // NTK-aware: the base grows with the sequence once it passes max_position_embeddings
      const len = Math.max(seqLen, r.maxPositions);
      const base = r.theta * ((r.factor * len) / r.maxPositions - (r.factor - 1)) ** (d / (d - 2));
      return { invFreq: baseInvFreq(base, d), scale: 1 };
    }
    case 'llama3': {
      const lowWavelen = r.originalMaxPositions / r.lowFreqFactor;
      const highWavelen = r.originalMaxPositions / r.highFreqFactor;
      const invFreq = baseInvFreq(r.theta, d).map((f) => {
        const wavelen = (2 * Math.PI) / f;
        if (wavelen < highWavelen) return f;
        if (wavelen > lowWavelen) return f / r.factor;
        const smooth = (r.originalMaxPositions / wavelen - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor);
        return (1 - smooth) * (f / r.factor) + smooth * f;
      });
      return { invFreq, scale: 1 };
    }
    case 'yarn': {
      const mscale = (s: number, m = 1): number => (s <= 1 ? 1 : 0.1 * m * Math.log(s) + 1);
      const scale =
        r.attentionFactor ??
        (r.mscale && r.mscaleAllDim ? mscale(r.factor, r.mscale) / mscale(r.factor, r.mscaleAllDim) : mscale(r.factor));
      const corr = (rot: number): number => (d * Math.log(r.originalMaxPositions / (rot * 2 * Math.PI))) / (2 * Math.log(r.theta));
      let low = corr(r.betaFast);
      let high = corr(r.betaSlow);
      if (r.truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, d - 1);
      if (low === high) high += 0.001;
      const extrapolation = baseInvFreq(r.theta, d);
      const invFreq = extrapolation.map((f, i) => {
        const ramp = Math.min(1, Math.max(0, Math.fround((i - low) / (high - low))));
        const keep = 1 - ramp;
        return (f / r.factor) * (1 - keep) + f * keep;
      });
      return { invFreq, scale };
    }
    case 'longrope': {
      const scale = r.attentionFactor ?? (r.factor <= 1 ? 1 : Math.sqrt(1 + Math.log(r.factor) / Math.log(r.originalMaxPositions)));
      const ext = seqLen > r.originalMaxPositions ? r.longFactor : r.shortFactor;
      const invFreq = new Float32Array(d / 2);
      for (let i = 0; i < d / 2; i++) invFreq[i] = 1 / Math.fround(Math.fround(ext[i]!) * Math.fround(r.theta ** Math.fround((2 * i) / d)));
      return { invFreq, scale };
    }
  }
}

/**
 * Rotate-half RoPE on the first `dim` dimensions of each head. The cos/sin table of the positions a call covers is
 * computed on demand and reused while the positions repeat (q and k of every layer of one forward).
 */
export class Rope {
  private key = '';
  private cos = new Float32Array(0);
  private sin = new Float32Array(0);
  constructor(readonly cfg: RopeConfig) {}

  private table(start: number, seq: number): void {
    const key = `${start}:${seq}`;
    if (key === this.key) return;
    const { invFreq, scale } = ropeFrequencies(this.cfg, start + seq);
    const half = invFreq.length;
    this.cos = new Float32Array(seq * half);
    this.sin = new Float32Array(seq * half);
    for (let t = 0; t < seq; t++) {
      for (let i = 0; i < half; i++) {
        const a = Math.fround((start + t) * invFreq[i]!);
        this.cos[t * half + i] = Math.cos(a) * scale;
        this.sin[t * half + i] = Math.sin(a) * scale;
      }
    }
    this.key = key;
  }

  /** In place on x [batch, seq, heads, headDim]; query t of every sequence sits at position start + t. */
  apply(x: Float32Array, batch: number, seq: number, heads: number, headDim: number, start: number): void {
    this.table(start, seq);
    const half = this.cfg.dim / 2;
    for (let b = 0; b < batch; b++) {
      for (let t = 0; t < seq; t++) {
        const po = t * half;
        for (let h = 0; h < heads; h++) {
          const o = ((b * seq + t) * heads + h) * headDim;
          for (let i = 0; i < half; i++) {
            const c = this.cos[po + i]!;
            const s = this.sin[po + i]!;
            const x1 = x[o + i]!;
            const x2 = x[o + half + i]!;
            x[o + i] = x1 * c - x2 * s;
            x[o + half + i] = x2 * c + x1 * s;
          }
        }
      }
    }
  }
}
