import { existsSync } from 'node:fs';
import { fail } from '../io/errors.js';
import { loadTokenizerDir } from '../io/tokenizer.js';
import {
  getBackend,
  type ActivationPrecision,
  type Backend,
  type LinearKernel,
  type LinearOptions,
  type PackedLinearWeights,
  type ResidualMlpKernel,
} from '../tensor/index.js';
import { readConfigJson } from '../io/config.js';
import { SafetensorsModel, type TensorReader } from '../io/safetensors.js';
import { isGgufFile } from '../formats/gguf-read.js';
import { openGgufModel, type GgufTensors } from './gguf-import.js';
import { LlamaTokenizer } from '../io/tokenizer.js';
import {
  dynamicRule,
  gptqTensorNames,
  layerQuantConfig,
  linearPrefix,
  readGptqPacked,
  readQuantConfig,
  type QuantConfig,
} from '../formats/gptq.js';
import { stackPackedRows } from '../formats/gptq-pack.js';
import { dequantizeBinary } from '../quant/gptqt.js';
import { gptqtTensorNames, readGptqtLinear } from '../formats/gptqt.js';
import {
  blockLinearWeights,
  checkTensorNames,
  Decoder,
  layerPrefix,
  linearGroups,
  linearShape,
  readBlockExtras,
  readLinear,
  readOuter,
  type LinearName,
  type PreparedBlock,
} from './decoder.js';
import { readModelConfig } from './registry.js';
import type { ModelConfig } from './config.js';

export interface LoadOptions {
  /**
   * Activations of packed (GPTQ) layers: 'fp32' (default) reproduces dequantize-then-matmul to float32
   * rounding; 'int8' is faster for generation (llama.cpp's choice) at a small extra error.
   */
  activations?: ActivationPrecision;
  /**
   * A model whose weights would pass the loaded-size limit (GPTQ_TS_MAX_LOADED_GB) is opened streamed instead of
   * refused: its outer weights loaded, none of its blocks, which `stream` prepares one at a time (eval runs every
   * window through a block before the next: Decoder.streamedHidden).
   */
  stream?: boolean;
}

/** The blocks of a model opened streamed (LoadOptions.stream), read and prepared when asked for. */
export interface BlockStream {
  /** why it is streamed: the GB its weights would take held and the limit they pass */
  readonly reason: string;
  /** block i's kernels, read and prepared now: the caller disposes them (disposeBlock) once used */
  prepare(i: number): Promise<PreparedBlock>;
  /** closes the checkpoint's files */
  close(): void;
}

export interface LoadedModel {
  model: Decoder<PreparedBlock>;
  tokenizer: LlamaTokenizer;
  /** set when the model was opened streamed: `model` then holds no blocks */
  stream?: BlockStream;
}

/**
 * A model directory ready for inference on the default backend: float checkpoints as prepared float kernels,
 * GPTQ checkpoints as packed kernels that never form the float matrix, GPTQT (binary-coded) ones dequantized.
 */
export async function loadModel(dir: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  if (isGgufFile(dir)) return loadGgufModel(dir, opts);
  if (!existsSync(dir)) fail(`${dir}: model directory not found`);
  const backend = await getBackend();
  const config = readConfigJson(dir);
  const cfg = readModelConfig(dir);
  const linear = kernelMaker(dir, config, cfg, backend, opts.activations ?? 'fp32');
  const tokenizer = (): LlamaTokenizer => checkedTokenizer(loadTokenizer(dir), cfg, `${dir}: the tokenizer`, "config.json's vocab_size");
  return assemble(dir, () => new SafetensorsModel(dir), cfg, backend, linear, tokenizer, opts.stream ?? false);
}

/** Every id the tokenizer can produce must index the embedding (a model's vocab_size may be padded beyond it). */
function checkedTokenizer(tokenizer: LlamaTokenizer, cfg: ModelConfig, what: string, rows: string): LlamaTokenizer {
  if (tokenizer.vocabSize > cfg.vocabSize) fail(`${what} has ${tokenizer.vocabSize} ids but ${rows} is ${cfg.vocabSize}`);
  return tokenizer;
}

/**
 * The decoder from a checkpoint's tensors: names checked, outer weights and each block's kernels. A model whose
 * weights would pass the loaded-size limit is refused up front, with the figure, rather than run out of memory
 * minutes into loading; or with `stream`, returned without its blocks, its files left open for `BlockStream`.
 */
async function assemble<R extends TensorReader & { close(): void }>(
  what: string,
  open: () => R,
  cfg: ModelConfig,
  backend: Backend,
  linear: LinearFormat<R>,
  tokenizer: (st: R) => LlamaTokenizer,
  stream: boolean,
): Promise<LoadedModel> {
  const tooLarge = linear.held && overLimit(what, linear.held.bytes, linear.held.what);
  const st = open();
  let streamed = false;
  try {
    if (tooLarge && !stream) fail(tooLarge);
    checkTensorNames(st, cfg, linear.tensors, linear.quantizedHead);
    const outer = readOuter(st, cfg, !linear.quantizedHead);
    if (linear.quantizedHead) outer.headKernel = (await linear.make(st, [cfg.tensors.head], [[cfg.vocabSize, cfg.embedDim]]))[0]!;
    const prepare = (i: number): Promise<PreparedBlock> => prepareBlock(st, cfg, linear, i);
    // a float head stays as stored: eval reads it a slice at a time, generate() widens it (Decoder.prepareHead)
    if (tooLarge) {
      const model = new Decoder<PreparedBlock>(cfg, backend, outer, []);
      const loaded = { model, tokenizer: tokenizer(st), stream: { reason: tooLarge, prepare, close: () => st.close() } };
      streamed = true;
      return loaded;
    }
    const blocks: PreparedBlock[] = [];
    for (let i = 0; i < cfg.numLayers; i++) blocks.push(await prepare(i));
    return { model: new Decoder(cfg, backend, outer, blocks), tokenizer: tokenizer(st) };
  } finally {
    if (!streamed) st.close();
  }
}

/** Block i's kernels, from the checkpoint's tensors. */
async function prepareBlock<R extends TensorReader>(st: R, cfg: ModelConfig, linear: LinearFormat<R>, i: number): Promise<PreparedBlock> {
  const groups = linearGroups(cfg);
  const p = layerPrefix(cfg, i);
  const kernels = (names: readonly LinearName[], opts?: LinearOptions): Promise<LinearKernel[]> =>
    linear.make(
      st,
      names.map((n) => `${p}${n}.weight`),
      names.map((n) => linearShape(cfg, n)),
      opts,
    );
  const extras = readBlockExtras(st, cfg, i);
  const qkv = await kernels(groups[0]!);
  const tail = await linear.tail?.(st, p, extras.norms);
  if (tail) return { ...extras, qkv, tail };
  return {
    ...extras,
    qkv,
    o: (await kernels(groups[1]!))[0]!,
    gateUp: await kernels(groups[2]!, gatedOutput(cfg)),
    down: (await kernels(groups[3]!))[0]!,
  };
}

/**
 * A stacked [gate; up] kernel may output the MLP's activation itself (LinearOptions) when that is silu(gate) ⊙ up
 * with no bias to add in between; the decoder takes it as the activation (Decoder.mlpActivation).
 */
function gatedOutput(cfg: ModelConfig): LinearOptions | undefined {
  const biased = linearGroups(cfg)[2]!.some((n) => cfg.biases.has(n));
  return cfg.mlp === 'gated' && cfg.activation === 'silu' && !biased ? { gated: 'silu' } : undefined;
}

/** GB of weights a model may take once loaded (float32 for layers held as float); GPTQ_TS_MAX_LOADED_GB overrides */
const LOADED_LIMIT_GB = 16;

/** The refusal of a model whose loaded weights (`bytes`, held as `held` says) would pass the limit, if they would. */
function overLimit(what: string, bytes: number, held: string): string | undefined {
  const limit = Number(process.env['GPTQ_TS_MAX_LOADED_GB'] ?? LOADED_LIMIT_GB);
  const gb = bytes / 1e9;
  if (gb <= limit) return undefined;
  return `${what}: gptq-ts would hold ${gb.toPrecision(3)} GB of its weights (${held}), more than the limit of ${limit} GB (GPTQ_TS_MAX_LOADED_GB raises it)`;
}

/**
 * A llama.cpp GGUF file (ours or llama.cpp's) for inference: its architecture and metadata read back into our
 * family's config and its tokenizer from its vocabulary (models/gguf-import.ts). Q4_0 and Q8_0 linear layers run on
 * the packed GPTQ kernels (the same grid: no float matrix is formed); other types are dequantized to float32
 * kernels exactly as llama.cpp dequantizes them. A file whose loaded weights would exceed the limit is refused up
 * front with the figure (or opened streamed).
 */
async function loadGgufModel(path: string, opts: LoadOptions): Promise<LoadedModel> {
  const g = openGgufModel(path);
  let opened = false;
  try {
    const backend = await getBackend();
    const format = ggufFormat(g.cfg, backend, opts.activations ?? 'fp32');
    format.held = { bytes: g.tensors.loadedBytes(), what: 'Q4_0/Q8_0 layers and head packed, every other type dequantized to float32' };
    // an untied Q4_0/Q8_0 output head (ours with --lm-head, llama-quantize --pure) runs packed as well
    const head = g.cfg.tensors.head;
    if (!g.cfg.tieWordEmbeddings && g.tensors.has(head) && g.tensors.isPacked(head)) format.quantizedHead = true;
    const tokenizer = (): LlamaTokenizer =>
      checkedTokenizer(LlamaTokenizer.fromGguf(g.file), g.cfg, `${path}: the vocabulary`, "the embedding's row count");
    opened = true;
    return await assemble(path, () => g.tensors, g.cfg, backend, format, tokenizer, opts.stream ?? false);
  } finally {
    // assemble owns the file from its call on
    if (!opened) g.tensors.close();
  }
}

/** A GGUF's linear layers: packed kernels where every part of a group is Q4_0/Q8_0, float32 ones where none is. */
function ggufFormat(cfg: ModelConfig, backend: Backend, activations: ActivationPrecision): LinearFormat<GgufTensors> {
  const floats = floatFormat<GgufTensors>(cfg, backend);
  const make: KernelMaker<GgufTensors> = async (st, names, shapes, opts) => {
    const packed = names.map((n) => st.packed(n));
    if (packed.every((p) => p !== undefined)) return packedKernels(backend, packed, activations, opts);
    if (packed.every((p) => p === undefined)) return floats.make(st, names, shapes, opts);
    // a mix (llama-quantize may give q, k and v different types): one kernel each
    return Promise.all(
      names.map(async (n, i) => {
        const p = packed[i];
        return p ? backend.packedLinear(p, activations) : (await floats.make(st, [n], [shapes[i]!]))[0]!;
      }),
    );
  };
  const tail = packedTail<GgufTensors>(cfg, backend, activations, (st, n) => st.packed(n));
  return { tensors: floats.tensors, make, ...(tail ? { tail } : {}) };
}

/**
 * The model's tokenizer: tokenizer.json (or GPT-2-style vocab.json + merges.txt) with the BOS/EOS/PAD and
 * add-BOS settings of tokenizer_config.json / generation_config.json; anything unsupported is refused by name.
 */
export function loadTokenizer(dir: string): LlamaTokenizer {
  if (!existsSync(dir)) fail(`${dir}: model directory not found`);
  return loadTokenizerDir(dir);
}

/**
 * Kernels for layers sharing an input: one stacked kernel when possible, else one per layer. `opts` applies to
 * the one kernel of a whole group (a gated output needs gate and up in one product) and is dropped otherwise.
 */
type KernelMaker<R extends TensorReader> = (
  st: R,
  names: string[],
  shapes: [number, number][],
  opts?: LinearOptions,
) => Promise<LinearKernel[]>;

/** Packed layers sharing an input as one kernel when their layouts stack, else one each (without `opts`). */
function packedKernels(
  backend: Backend,
  parts: PackedLinearWeights[],
  activations: ActivationPrecision,
  opts: LinearOptions | undefined,
): Promise<LinearKernel[]> {
  const one = parts.length > 1 ? stackPackedRows(parts) : parts[0];
  if (one) return Promise.all([backend.packedLinear(one, activations, opts)]);
  return Promise.all(parts.map((p) => backend.packedLinear(p, activations)));
}

/** A block's tail as one kernel (Backend.packedResidualMlp), for the block at `prefix` with these norms. */
type TailMaker<R extends TensorReader> = (
  st: R,
  prefix: string,
  norms: Record<string, Float32Array>,
) => Promise<ResidualMlpKernel | undefined>;

/**
 * Where the family's block is plain pre-norm (block() in decoder.ts: o_proj's residual, RMSNorm, silu(gate) ⊙ up,
 * down_proj's residual, and nothing else: no bias, no extra norm, no residual scale) and the layers are packed,
 * the tail of each block as one kernel; undefined for any other block.
 */
function packedTail<R extends TensorReader>(
  cfg: ModelConfig,
  backend: Backend,
  activations: ActivationPrecision,
  packed: (st: R, weightName: string, shape: [number, number]) => PackedLinearWeights | undefined,
): TailMaker<R> | undefined {
  const { norms: n, linear: L } = cfg;
  const extra = n.attnOut || n.mlpOut || n.attnResidual || n.mlpResidual;
  const plain = !cfg.parallel && cfg.normKind === 'rms' && n.mlpIn && !extra && cfg.residualScale === 1;
  if (!plain || !gatedOutput(cfg) || cfg.biases.has(L.o) || cfg.biases.has(L.down)) return undefined;
  return async (st, prefix, norms) => {
    const read = (name: LinearName): PackedLinearWeights | undefined => packed(st, `${prefix}${name}.weight`, linearShape(cfg, name));
    const [o, down] = [read(L.o), read(L.down)];
    const parts = linearGroups(cfg)[2]!.map(read);
    if (!o || !down || parts.some((x) => !x)) return undefined;
    const gateUp = parts.length > 1 ? stackPackedRows(parts as PackedLinearWeights[]) : parts[0];
    if (!gateUp) return undefined;
    return backend.packedResidualMlp({ o, gateUp, down, norm: norms[n.mlpIn!]!, eps: cfg.rmsNormEps }, activations);
  };
}

/** How the checkpoint stores its linear layers: the tensors of one, and kernels made from them. */
interface LinearFormat<R extends TensorReader = SafetensorsModel> {
  tensors: (weightName: string) => { required: string[]; optional?: string[] };
  make: KernelMaker<R>;
  /** the block's tail as one kernel, where the block and its layers allow it (else `make` per layer) */
  tail?: TailMaker<R>;
  /** the LM head is stored as one of these layers (GPTQ's `lm_head: true`) */
  quantizedHead?: boolean;
  /** the bytes the loaded model would hold, where that may pass the limit, and in what form */
  held?: { bytes: number; what: string };
}

/** A model's block linear layers as float32 (the float kernels' storage), in bytes. */
function floatLinearBytes(cfg: ModelConfig): number {
  const perBlock = linearGroups(cfg)
    .flat()
    .reduce((sum, n) => sum + linearShape(cfg, n)[0] * linearShape(cfg, n)[1], 0);
  return 4 * cfg.numLayers * perBlock;
}

/** Float linear layers read as float32 [out, in]; layers that share an input stacked into one kernel. */
function floatFormat<R extends TensorReader>(cfg: ModelConfig, backend: Backend): LinearFormat<R> {
  return {
    tensors: (w) => ({ required: [w] }),
    make: (st, names, shapes, opts) =>
      stackedFloats(
        backend,
        names.map((n, i) => readLinear(st, cfg, n, shapes[i]!)),
        shapes,
        opts,
      ),
  };
}

function stackedFloats(backend: Backend, ws: Float32Array[], shapes: [number, number][], opts?: LinearOptions): Promise<LinearKernel[]> {
  const rows = shapes.reduce((s, [r]) => s + r, 0);
  let stacked = ws[0]!;
  if (ws.length > 1) {
    stacked = new Float32Array(rows * shapes[0]![1]);
    let o = 0;
    for (const w of ws) {
      stacked.set(w, o);
      o += w.length;
    }
  }
  return Promise.all([backend.floatLinear(stacked, rows, shapes[0]![1], opts)]);
}

function kernelMaker(
  dir: string,
  config: Record<string, unknown>,
  cfg: ModelConfig,
  backend: Backend,
  activations: ActivationPrecision,
): LinearFormat {
  const floats = (ws: Float32Array[], shapes: [number, number][], opts?: LinearOptions): Promise<LinearKernel[]> =>
    stackedFloats(backend, ws, shapes, opts);
  const bcq = config['quantization_config'] as { quant_method?: string; bits?: number } | undefined;
  if (bcq?.quant_method === 'gptqt') {
    const bits = bcq.bits;
    if (bits !== 2 && bits !== 3) fail(`${dir}/config.json: gptqt bits ${JSON.stringify(bits)} is not 2 or 3`);
    return {
      held: { bytes: floatLinearBytes(cfg), what: 'its binary-coded linear layers dequantized to float32' },
      tensors: gptqtTensorNames,
      make: (st, names, shapes, opts) =>
        floats(
          names.map((n, i) => dequantizeBinary(readGptqtLinear(st, n, shapes[i]![0], shapes[i]![1], bits))),
          shapes,
          opts,
        ),
    };
  }
  const qc = readQuantConfig(dir, config);
  if (!qc)
    return {
      ...floatFormat(cfg, backend),
      held: { bytes: floatLinearBytes(cfg), what: 'its linear layers as float32; a quantized checkpoint of it loads packed' },
    };
  // a block layer left float by transformers' modules_in_block_to_quantize would be read as packed, and is missing
  const floatLayers =
    qc.modulesInBlock &&
    linearGroups(cfg)
      .flat()
      .filter((n) => !qc.modulesInBlock!.includes(n));
  if (floatLayers?.length)
    fail(
      `${dir}/config.json: quantization_config modules_in_block_to_quantize leaves ${floatLayers.join(', ')} unquantized; a block mixing float and packed layers is not implemented`,
    );
  // GPTQModel refuses to quantize a tied head: one table would be both the embedding and a packed layer
  if (qc.lmHead && cfg.tieWordEmbeddings)
    fail(
      `${dir}/config.json: quantization_config has lm_head true but tie_word_embeddings is true (the head is the embedding table, not a quantized layer)`,
    );
  // `dynamic` may give a layer its own settings, or leave it float: refused like the above, before any tensor is read
  const modules = [
    ...Array.from({ length: cfg.numLayers }, (_, i) => blockLinearWeights(cfg, i)).flat(),
    ...(qc.lmHead ? [cfg.tensors.head] : []),
  ].map(linearPrefix);
  const left = modules.find((m) => !layerQuantConfig(qc, m));
  if (left)
    fail(
      `${dir}/config.json: quantization_config dynamic ${dynamicRule(qc, left)!.key} leaves ${left} unquantized; a model mixing float and packed linear layers is not implemented`,
    );
  const layerQc = (n: string): QuantConfig => layerQuantConfig(qc, linearPrefix(n))!;
  const packed = (st: SafetensorsModel, n: string, [rows, cols]: [number, number]): PackedLinearWeights =>
    readGptqPacked(st, n, rows, cols, layerQc(n));
  const tail = packedTail(cfg, backend, activations, packed);
  return {
    quantizedHead: qc.lmHead,
    tensors: gptqTensorNames,
    make: (st, names, shapes, opts) =>
      packedKernels(
        backend,
        names.map((n, i) => packed(st, n, shapes[i]!)),
        activations,
        opts,
      ),
    ...(tail ? { tail } : {}),
  };
}
