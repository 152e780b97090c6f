import { existsSync } from 'node:fs';
import { fail } from '../io/errors.js';
import { loadTokenizerDir, type LlamaTokenizer } from '../io/tokenizer.js';
import { getBackend, type ActivationPrecision, type Backend, type LinearKernel } from '../tensor/index.js';
import { readConfigJson } from '../io/config.js';
import { SafetensorsModel } from '../io/safetensors.js';
import { gptqTensorNames, readGptqPacked, readQuantConfig } from '../formats/gptq.js';
import { stackPackedRows } from '../formats/gptq-pack.js';
import { dequantizeBinary } from '../quant/gptqt.js';
import { gptqtTensorNames, readGptqtLinear } from '../formats/gptqt.js';
import {
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
}

/**
 * A model directory ready for inference on the default backend: float checkpoints as prepared float kernels,
 * GPTQ checkpoints as packed kernels that never form the float matrix, GPTQT (binary-coded) ones dequantized.
 */
export async function loadModel(
  dir: string,
  opts: LoadOptions = {},
): Promise<{ model: Decoder<PreparedBlock>; tokenizer: LlamaTokenizer }> {
  if (!existsSync(dir)) fail(`${dir}: model directory not found`);
  const backend = await getBackend();
  const config = readConfigJson(dir);
  const cfg = readModelConfig(dir);
  const linear = kernelMaker(dir, config, cfg, backend, opts.activations ?? 'fp32');
  const st = new SafetensorsModel(dir);
  try {
    checkTensorNames(st, cfg, linear.tensors);
    const outer = readOuter(st, cfg);
    const blocks: PreparedBlock[] = [];
    const groups = linearGroups(cfg);
    for (let i = 0; i < cfg.numLayers; i++) {
      const p = layerPrefix(cfg, i);
      const kernels = (names: readonly LinearName[]): Promise<LinearKernel[]> =>
        linear.make(
          st,
          names.map((n) => `${p}${n}.weight`),
          names.map((n) => linearShape(cfg, n)),
        );
      blocks.push({
        ...readBlockExtras(st, cfg, i),
        qkv: await kernels(groups[0]!),
        o: (await kernels(groups[1]!))[0]!,
        gateUp: await kernels(groups[2]!),
        down: (await kernels(groups[3]!))[0]!,
      });
    }
    // the head stays as stored: eval reads it a slice at a time, generate() widens it (Decoder.prepareHead)
    const model = new Decoder(cfg, backend, outer, blocks);
    const tokenizer = loadTokenizer(dir);
    // every id the tokenizer can produce must index the embedding (a model's vocab_size may be padded beyond it)
    if (tokenizer.vocabSize > cfg.vocabSize) {
      fail(`${dir}: the tokenizer has ${tokenizer.vocabSize} ids but config.json's vocab_size is ${cfg.vocabSize}`);
    }
    return { model, tokenizer };
  } finally {
    st.close();
  }
}

/**
 * The model's tokenizer: tokenizer.json (or GPT-2-style vocab.json + merges.txt) with the BOS/EOS/PAD and
 * add-BOS settings of tokenizer_config.json / generation_config.json; anything unsupported is refused by name.
 */
export function loadTokenizer(dir: string): LlamaTokenizer {
  if (!existsSync(dir)) fail(`${dir}: model directory not found`);
  return loadTokenizerDir(dir);
}

/** Kernels for layers sharing an input: one stacked kernel when possible, else one per layer. */
type KernelMaker = (st: SafetensorsModel, names: string[], shapes: [number, number][]) => Promise<LinearKernel[]>;

/** How the checkpoint stores its linear layers: the tensors of one, and kernels made from them. */
interface LinearFormat {
  tensors: (weightName: string) => { required: string[]; optional?: string[] };
  make: KernelMaker;
}

function kernelMaker(
  dir: string,
  config: Record<string, unknown>,
  cfg: ModelConfig,
  backend: Backend,
  activations: ActivationPrecision,
): LinearFormat {
  const floats = (ws: Float32Array[], shapes: [number, number][]): Promise<LinearKernel[]> => {
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
    return Promise.all([backend.floatLinear(stacked, rows, shapes[0]![1])]);
  };
  const bcq = config['quantization_config'] as { quant_method?: string; bits?: number } | undefined;
  if (bcq?.quant_method === 'gptqt') {
    const bits = bcq.bits;
    if (bits !== 2 && bits !== 3) fail(`${dir}/config.json: gptqt bits ${JSON.stringify(bits)} is not 2 or 3`);
    return {
      tensors: gptqtTensorNames,
      make: (st, names, shapes) =>
        floats(
          names.map((n, i) => dequantizeBinary(readGptqtLinear(st, n, shapes[i]![0], shapes[i]![1], bits))),
          shapes,
        ),
    };
  }
  const qc = readQuantConfig(dir, config);
  if (!qc) {
    return {
      tensors: (w) => ({ required: [w] }),
      make: (st, names, shapes) =>
        floats(
          names.map((n, i) => readLinear(st, cfg, n, shapes[i]!)),
          shapes,
        ),
    };
  }
  return {
    tensors: gptqTensorNames,
    make: async (st, names, shapes) => {
      const parts = names.map((n, i) => readGptqPacked(st, n, shapes[i]![0], shapes[i]![1], qc));
      const stacked = parts.length > 1 ? stackPackedRows(parts) : undefined;
      return Promise.all((stacked ? [stacked] : parts).map((p) => backend.packedLinear(p, activations)));
    },
  };
}
