import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readConfigJson } from '../io/config.js';
import { fail } from '../io/errors.js';
import { firstNonFinite16, floatArrayToHalf } from '../io/fp16.js';
import { SafetensorsModel, toFloat32, type RawTensor, type TensorToWrite } from '../io/safetensors.js';
import { numGroups, type QuantizedLayer } from '../quant/quantized-layer.js';
import { SUPPORTED_BITS } from '../quant/quantizer.js';
import { writeModelDir } from './model-dir.js';
import { readModelConfig } from '../models/index.js';
import { packedWeights, packLayer, unpackLayer, type CheckpointFormat, type GptqTensors } from './gptq-pack.js';
import type { PackedLinearWeights } from '../tensor/backend.js';
import { streamValue } from '../tensor/bit-stream.js';

/**
 * GPTQ checkpoints as transformers / vLLM / GPTQModel / TGI load them: per quantized linear `<name>.qweight`,
 * `.qzeros`, `.scales` (fp16) and `.g_idx`; every other tensor as a float; config.json with
 * `quantization_config`, and quantize_config.json for AutoGPTQ-era loaders.
 */
export const CHECKPOINT_FORMATS: CheckpointFormat[] = ['gptq', 'gptq_v2'];

export interface QuantConfig {
  bits: number;
  groupSize: number;
  descAct: boolean;
  sym: boolean;
  format: CheckpointFormat;
  /** the LM head is quantized too (GPTQModel's `lm_head`), with the same settings */
  lmHead: boolean;
  /**
   * transformers' `modules_in_block_to_quantize`: the block layers that were quantized (names after
   * `model.layers.N.`), in groups; absent when all were
   */
  modulesInBlock?: string[];
  /** GPTQModel's `dynamic`: per-module overrides of these settings, the first matching rule deciding (layerQuantConfig) */
  dynamic?: DynamicRule[];
}

/**
 * One `dynamic` entry: a regular expression over module names (`model.layers.3.mlp.down_proj`, `lm_head`), matched
 * from the name's start as Python's re.match does; `+:` (or no prefix) overrides the settings of the modules it
 * matches, `-:` leaves them unquantized.
 */
export interface DynamicRule {
  /** the rule's key as the checkpoint spells it */
  key: string;
  skip: boolean;
  overrides: Partial<Pick<QuantConfig, 'bits' | 'groupSize' | 'descAct' | 'sym'>>;
}

/** each rule's pattern, compiled when its config is read (the rules stay plain data, as the JSON of inspect shows them) */
const patterns = new Map<string, RegExp>();
const matches = (rule: DynamicRule, module: string): boolean => patterns.get(rule.key)!.test(module);

/** The rule that decides a module's settings, if any. */
export const dynamicRule = (qc: QuantConfig, module: string): DynamicRule | undefined => qc.dynamic?.find((r) => matches(r, module));

/** The settings of one module (its name without `.weight`), or undefined where a `-:` rule leaves it float. */
export function layerQuantConfig(qc: QuantConfig, module: string): QuantConfig | undefined {
  const rule = dynamicRule(qc, module);
  if (!rule) return qc;
  return rule.skip ? undefined : { ...qc, ...rule.overrides };
}

/** `dynamic` keys that change what a module's tensors mean, with their names in QuantConfig */
const DYNAMIC_SETTINGS = { bits: 'bits', group_size: 'groupSize', desc_act: 'descAct', sym: 'sym' } as const;
/** `dynamic` keys that only steered how a module was quantized: nothing to read differently */
const DYNAMIC_QUANTIZER_ONLY = new Set(['damp_percent', 'damp_auto_increment', 'static_groups', 'true_sequential', 'mse']);

function parseDynamic(where: string, dynamic: unknown): DynamicRule[] {
  if (typeof dynamic !== 'object' || dynamic === null || Array.isArray(dynamic))
    fail(`${where}: dynamic ${JSON.stringify(dynamic)} is not an object of module patterns`);
  return Object.entries(dynamic).map(([key, value]) => {
    const source = key.replace(/^[+-]:/, '');
    // Python re syntax that JavaScript reads differently or not at all: named groups, inline flags, \A and \Z
    if (/\(\?P|\(\?[aiLmsux]|\\[AZ]/.test(source)) fail(`${where}: dynamic pattern ${JSON.stringify(key)} uses Python-only regex syntax`);
    try {
      patterns.set(key, new RegExp(`^(?:${source})`));
    } catch {
      fail(`${where}: dynamic pattern ${JSON.stringify(key)} is not a regular expression`);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value))
      fail(`${where}: dynamic ${JSON.stringify(key)} is not an object of settings`);
    const overrides: DynamicRule['overrides'] = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (DYNAMIC_QUANTIZER_ONLY.has(k)) continue;
      const bad = (): never => fail(`${where}: dynamic ${JSON.stringify(key)}: ${k} ${JSON.stringify(v)} is not valid`);
      if (k === 'bits') overrides.bits = typeof v === 'number' && SUPPORTED_BITS.includes(v) ? v : bad();
      else if (k === 'group_size') overrides.groupSize = typeof v === 'number' && Number.isInteger(v) && (v > 0 || v === -1) ? v : bad();
      else if (k === 'desc_act' || k === 'sym') overrides[DYNAMIC_SETTINGS[k]] = typeof v === 'boolean' ? v : bad();
      else fail(`${where}: dynamic ${JSON.stringify(key)}: the override ${k} is not implemented`);
    }
    return { key, skip: key.startsWith('-:'), overrides };
  });
}

/**
 * `dynamic` for the layers whose settings differ from the checkpoint's (say an 8-bit head beside 4-bit blocks): one
 * rule each, its module name matched whole.
 */
function dynamicFor(o: GptqExportOptions, layers: ReadonlyMap<string, QuantizedLayer>): Record<string, Record<string, number>> | undefined {
  const rules: Record<string, Record<string, number>> = {};
  for (const [name, q] of layers) {
    const differs = {
      ...(q.bits !== o.quant.bits ? { bits: q.bits } : {}),
      ...(q.groupSize !== o.quant.groupSize ? { group_size: q.groupSize } : {}),
    };
    if (Object.keys(differs).length) rules[`+:${linearPrefix(name).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`] = differs;
  }
  return Object.keys(rules).length ? rules : undefined;
}

export interface GptqExportOptions {
  format: CheckpointFormat;
  /** dtype of the tensors that are not quantized (embeddings, norms, head) */
  floatDtype: 'F16' | 'F32';
  /** start a new shard above this many bytes */
  maxShardBytes: number;
  quant: { bits: number; groupSize: number; actOrder: boolean; sym: boolean; percdamp: number; staticGroups: boolean };
  summary?: object;
  warn?: (msg: string) => void;
}

/** a linear layer's module name (its `dynamic` rules match it; its packed tensors are named under it) */
export const linearPrefix = (weightName: string): string => weightName.replace(/\.weight$/, '');

function quantizationConfig(o: GptqExportOptions, lmHead: boolean, layers: ReadonlyMap<string, QuantizedLayer>): Record<string, unknown> {
  const dynamic = dynamicFor(o, layers);
  return {
    quant_method: 'gptq',
    bits: o.quant.bits,
    group_size: o.quant.groupSize,
    desc_act: o.quant.actOrder,
    sym: o.quant.sym,
    damp_percent: o.quant.percdamp,
    true_sequential: true,
    static_groups: o.quant.staticGroups,
    checkpoint_format: o.format,
    model_file_base_name: 'model',
    lm_head: lmHead,
    ...(dynamic ? { dynamic } : {}),
  };
}

const ASYMMETRIC_V1 =
  'an asymmetric grid needs --format gptq_v2: GPTQModel refuses asymmetric v1 ("gptq") checkpoints it did not write, and v1 stores zero−1, which loaders read differently (a zero of 0 becomes 2^bits or carries into its neighbour)';

/**
 * What the maintained loaders (GPTQModel, transformers/optimum, vLLM; their loader code is cited in the README)
 * make of a GPTQ checkpoint with these settings. `refuse` is why it must not be written: some loader would
 * refuse or misread it. `warnings` name loaders that cannot run an otherwise sound checkpoint.
 */
export function loaderCompatibility(
  format: CheckpointFormat,
  q: { bits: number; groupSize: number; sym: boolean; percdamp: number; lmHead?: boolean },
): { refuse?: string; warnings: string[] } {
  const warnings: string[] = [];
  if (format === 'gptq' && !q.sym) return { refuse: ASYMMETRIC_V1, warnings };
  if (!(q.percdamp > 0)) {
    return {
      refuse: `--damp ${q.percdamp} would be recorded as damp_percent ${q.percdamp}, which transformers, optimum and GPTQModel refuse (they need 0 < damp_percent < 1); use a small positive damping such as 0.001`,
      warnings,
    };
  }
  if (q.groupSize !== -1 && q.groupSize % 16 !== 0) {
    return {
      refuse: `--group-size ${q.groupSize}: groups must start on multiples of 16 columns for packed kernels (the loaders' kernels take 16, 32, 64, 128, 256, ...; -1 for per-channel)`,
      warnings,
    };
  }
  if (q.bits !== 4 && q.bits !== 8)
    warnings.push(`vLLM loads only 4- and 8-bit GPTQ checkpoints; GPTQModel and transformers load ${q.bits} bits`);
  if (!q.sym) warnings.push('vLLM and AutoGPTQ do not load asymmetric (gptq_v2) checkpoints; GPTQModel and transformers do');
  if (![-1, 32, 64, 128].includes(q.groupSize))
    warnings.push(`vLLM's Marlin kernels take group sizes -1, 32, 64 and 128, not ${q.groupSize}`);
  // optimum's convert_model swaps in packed layers under the decoder blocks only
  if (q.lmHead)
    warnings.push(
      'a quantized lm_head loads in GPTQModel and vLLM; transformers (optimum) keeps lm_head a float layer and would leave it uninitialized',
    );
  return { warnings };
}

/** float16's largest value is 65504; from halfway to the next power of two up, a value rounds to Inf */
const HALF_OVERFLOW = 65520;
const beyondHalf = (what: string, i: number, v: number): never =>
  fail(
    Number.isFinite(v)
      ? `${what}: element ${i} (${v}) is beyond float16's range (±65504); keep the float tensors float32 (--dtype float32)`
      : `${what}: contains NaN/Inf at element ${i}`,
  );

/**
 * A float tensor widened to float32 a slice at a time, each slice handed to `use` with its first element's index:
 * only the stored tensor is held whole (a bf16 embedding of 128256 x 4096 widened at once would hold 2.1 GB more).
 */
function forSlices(t: RawTensor, what: string, use: (wide: Float32Array, at: number) => void): void {
  const SLICE = 1 << 22;
  const n = t.data.length;
  for (let a = 0; a < n; a += SLICE) {
    use(toFloat32({ dtype: t.dtype, shape: [Math.min(n, a + SLICE) - a], data: t.data.subarray(a, a + SLICE) }, what), a);
  }
}

/** A float tensor as float16; a value float16 cannot hold is refused by name, not written as Inf. */
function halfTensor(t: RawTensor, what: string): Uint16Array {
  const out = new Uint16Array(t.data.length);
  forSlices(t, what, (wide, at) => {
    const half = floatArrayToHalf(wide);
    const bad = firstNonFinite16(half, 0x7c00);
    if (bad >= 0) beyondHalf(what, at + bad, wide[bad]!);
    out.set(half, at);
  });
  return out;
}

/**
 * The tensors a float16 GPTQ checkpoint keeps float, checked against float16's range before any quantization
 * work: a value the writer would have to refuse is refused now, not after hours of work (a comparison, not the
 * conversion: a 7B's bf16 embedding and head in 3.7 s, 6.8 converted).
 */
export function checkHalfRange(srcDir: string, quantized: ReadonlySet<string>): void {
  const st = new SafetensorsModel(srcDir);
  try {
    for (const name of st.names()) {
      if (quantized.has(name) || st.info(name).dtype === 'F16') continue;
      const what = `${srcDir}: ${name}`;
      forSlices(st.read(name), what, (wide, at) => {
        // NaN fails the comparison too
        for (let i = 0; i < wide.length; i++) if (!(Math.abs(wide[i]!) < HALF_OVERFLOW)) beyondHalf(what, at + i, wide[i]!);
      });
    }
  } finally {
    st.close();
  }
}

export async function writeGptqCheckpoint(
  srcDir: string,
  outDir: string,
  layers: ReadonlyMap<string, QuantizedLayer>,
  o: GptqExportOptions,
): Promise<void> {
  const st = new SafetensorsModel(srcDir);
  const tensors = new Map<string, TensorToWrite>();
  try {
    // every tensor is made when its turn to be written comes: the checkpoint is never in memory whole
    for (const name of st.names()) {
      const q = layers.get(name);
      if (!q) {
        const half = o.floatDtype === 'F16';
        tensors.set(name, {
          dtype: half ? 'F16' : 'F32',
          shape: st.info(name).shape,
          data: () => (half ? halfTensor : toFloat32)(st.read(name), `${srcDir}: ${name}`),
        });
        continue;
      }
      if (o.format === 'gptq' && !o.quant.sym) fail(`${name}: ${ASYMMETRIC_V1}`);
      const p = linearPrefix(name);
      const G = numGroups(q);
      // a layer is packed when the first of its four tensors is written and let go with the last (they are
      // written one after another)
      let packed: ReturnType<typeof packLayer> | undefined;
      let taken = 0;
      const part = (k: keyof ReturnType<typeof packLayer>) => () => {
        packed ??= packLayer(layers.get(name)!, o.format);
        const data = packed[k];
        if (++taken === 4) packed = undefined;
        return data;
      };
      tensors.set(`${p}.qweight`, { dtype: 'I32', shape: [(q.cols * q.bits) / 32, q.rows], data: part('qweight') });
      tensors.set(`${p}.qzeros`, { dtype: 'I32', shape: [G, (q.rows * q.bits) / 32], data: part('qzeros') });
      tensors.set(`${p}.scales`, { dtype: 'F16', shape: [G, q.rows], data: part('scales') });
      tensors.set(`${p}.g_idx`, { dtype: 'I32', shape: [q.cols], data: part('gIdx') });
    }
    const config = readConfigJson(srcDir);
    const qc = quantizationConfig(o, layers.has(readModelConfig(srcDir).tensors.head), layers);
    config['quantization_config'] = qc;
    config['torch_dtype'] = o.floatDtype === 'F16' ? 'float16' : 'float32';
    await writeModelDir(srcDir, outDir, {
      json: { 'config.json': config, 'quantize_config.json': qc, 'quantize_summary.json': o.summary },
      tensors,
      maxShardBytes: o.maxShardBytes,
    });
  } finally {
    st.close();
  }
}

/** The GPTQ settings of a model directory, or undefined for a float model. */
export function readQuantConfig(dir: string, config: Record<string, unknown>): QuantConfig | undefined {
  let qc = config['quantization_config'] as Record<string, unknown> | undefined;
  const where = qc ? `${dir}/config.json quantization_config` : `${dir}/quantize_config.json`;
  if (!qc && existsSync(join(dir, 'quantize_config.json'))) qc = JSON.parse(readFileSync(join(dir, 'quantize_config.json'), 'utf8'));
  if (!qc) return undefined;
  // GPTQModel writes each of these under two names (the second one newer); both must say the same
  const aliased = (older: string, newer: string): unknown => {
    const a = qc![older];
    const b = qc![newer];
    if (a !== undefined && b !== undefined && a !== b)
      fail(`${where}: ${older} ${JSON.stringify(a)} and ${newer} ${JSON.stringify(b)} disagree`);
    return a ?? b;
  };
  const method = aliased('quant_method', 'method') ?? 'gptq';
  if (method !== 'gptq') fail(`${where}: unsupported quant_method ${JSON.stringify(method)} (supported: gptq, gptqt)`);
  const format = (aliased('checkpoint_format', 'format') ?? 'gptq') as CheckpointFormat;
  if (!CHECKPOINT_FORMATS.includes(format))
    fail(`${where}: unknown checkpoint_format ${JSON.stringify(format)} (supported: ${CHECKPOINT_FORMATS.join(', ')})`);
  // settings that change what the tensors mean: each one we do not implement is refused by its name
  if (qc['is_marlin_format'] === true) fail(`${where}: is_marlin_format (Marlin's repacked layout) is not implemented`);
  const packDtype = qc['pack_dtype'] ?? 'int32';
  if (packDtype !== 'int32') fail(`${where}: pack_dtype ${JSON.stringify(packDtype)} is not implemented (codes packed in int32 only)`);
  const rotation = qc['rotation'];
  if (rotation !== undefined && rotation !== null)
    fail(`${where}: rotation ${JSON.stringify(rotation)} (online Hadamard rotations at inference) is not implemented`);
  const bits = qc['bits'];
  if (typeof bits !== 'number' || !SUPPORTED_BITS.includes(bits))
    fail(`${where}: bits ${JSON.stringify(bits)} is not one of ${SUPPORTED_BITS.join(', ')}`);
  const groupSize = qc['group_size'] ?? -1;
  if (typeof groupSize !== 'number' || !Number.isInteger(groupSize) || (groupSize <= 0 && groupSize !== -1))
    fail(`${where}: invalid group_size ${JSON.stringify(groupSize)}`);
  const lmHead = qc['lm_head'] ?? false;
  if (typeof lmHead !== 'boolean') fail(`${where}: lm_head ${JSON.stringify(lmHead)} is not true or false`);
  const dynamic = qc['dynamic'] === undefined || qc['dynamic'] === null ? [] : parseDynamic(where, qc['dynamic']);
  const modules = qc['modules_in_block_to_quantize'];
  let modulesInBlock: string[] | undefined;
  if (modules !== undefined && modules !== null) {
    const flat = Array.isArray(modules) ? modules.flat() : [];
    if (!Array.isArray(modules) || flat.length === 0 || flat.some((m) => typeof m !== 'string'))
      fail(`${where}: modules_in_block_to_quantize ${JSON.stringify(modules)} is not a list of lists of module names`);
    modulesInBlock = flat as string[];
  }
  const base = { bits, groupSize, descAct: qc['desc_act'] === true, sym: qc['sym'] !== false, format, lmHead };
  return { ...base, ...(modulesInBlock ? { modulesInBlock } : {}), ...(dynamic.length ? { dynamic } : {}) };
}

/** Read and check the packed tensors of one quantized linear layer ([rows=out, cols=in]) of a GPTQ checkpoint. */
export function readGptqTensors(st: SafetensorsModel, weightName: string, rows: number, cols: number, qc: QuantConfig): GptqTensors {
  const p = linearPrefix(weightName);
  const { bits } = qc;
  const G = qc.groupSize > 0 ? Math.ceil(cols / qc.groupSize) : 1;
  const get = (suffix: string, dtype: string, shape: number[]): Int32Array | Uint16Array => {
    const name = `${p}.${suffix}`;
    const info = st.info(name);
    if (info.dtype !== dtype) fail(`${info.file}: ${name} is ${info.dtype}, expected ${dtype}`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      fail(`${info.file}: ${name} has shape [${info.shape}] but the config (bits ${bits}, group_size ${qc.groupSize}) implies [${shape}]`);
    }
    return st.read(name).data as Int32Array | Uint16Array;
  };
  const qweight = get('qweight', 'I32', [(cols * bits) / 32, rows]) as Int32Array;
  const qzeros = get('qzeros', 'I32', [G, (rows * bits) / 32]) as Int32Array;
  const scales = get('scales', 'F16', [G, rows]) as Uint16Array;
  const bad = firstNonFinite16(scales, 0x7c00);
  if (bad >= 0) fail(`${st.info(`${p}.scales`).file}: ${p}.scales has NaN/Inf at element ${bad}`);
  // without g_idx, groups are contiguous columns: only what desc_act false promises
  if (!st.has(`${p}.g_idx`) && qc.descAct)
    fail(`${st.info(`${p}.qweight`).file}: ${p}.g_idx is missing but desc_act is true (the column order is unknown)`);
  const gIdx = st.has(`${p}.g_idx`)
    ? (get('g_idx', 'I32', [cols]) as Int32Array)
    : Int32Array.from({ length: cols }, (_, c) => (qc.groupSize > 0 ? Math.floor(c / qc.groupSize) : 0));
  for (let c = 0; c < cols; c++) {
    if (gIdx[c]! < 0 || gIdx[c]! >= G) fail(`${st.info(`${p}.qweight`).file}: ${p}.g_idx[${c}] = ${gIdx[c]} is outside 0..${G - 1}`);
  }
  return { qweight, qzeros, scales, gIdx };
}

/** The tensors a GPTQ checkpoint stores for the linear layer `weightName` (g_idx may be absent without act-order). */
export function gptqTensorNames(weightName: string): { required: string[]; optional: string[] } {
  const p = linearPrefix(weightName);
  return { required: [`${p}.qweight`, `${p}.qzeros`, `${p}.scales`], optional: [`${p}.g_idx`] };
}

/** One quantized linear layer of a GPTQ checkpoint, unpacked to codes. */
export function readGptqLinear(st: SafetensorsModel, weightName: string, rows: number, cols: number, qc: QuantConfig): QuantizedLayer {
  const t = readGptqTensors(st, weightName, rows, cols, qc);
  return unpackLayer(t, { rows, cols, bits: qc.bits, groupSize: qc.groupSize, sym: qc.sym }, qc.format);
}

/** One quantized linear layer of a GPTQ checkpoint as the packed kernels take it (still packed). */
export function readGptqPacked(st: SafetensorsModel, weightName: string, rows: number, cols: number, qc: QuantConfig): PackedLinearWeights {
  const p = packedWeights(readGptqTensors(st, weightName, rows, cols, qc), { rows, cols, bits: qc.bits }, qc.format);
  if (qc.sym) {
    // a symmetric grid's zero point is 2^(bits-1) everywhere; anything else means the config misdescribes the file
    const wordsPerGroup = (rows * qc.bits) / 32;
    const mid = 1 << (qc.bits - 1);
    for (let g = 0; g < p.scales.length / rows; g++) {
      for (let r = 0; r < rows; r++) {
        const z = streamValue((w) => p.qzeros[g * wordsPerGroup + w]!, r, qc.bits);
        if (z !== mid) {
          fail(
            `${st.info(`${linearPrefix(weightName)}.qzeros`).file}: ${linearPrefix(weightName)}.qzeros group ${g} row ${r} has zero point ${z}, but quantization_config says sym (zero ${mid})`,
          );
        }
      }
    }
  }
  return p;
}
