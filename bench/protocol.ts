import { calibrationWindows } from '../src/calib/windows.js';
import { loadText } from '../src/calib/datasets.js';
import { evaluate, referenceStates, type ReferenceStates } from '../src/eval/perplexity.js';
import { pullStories15m } from '../src/io/stories.js';
import { Decoder, readModelConfig, type LinearName } from '../src/models/index.js';
import { loadTokenizer } from '../src/models/load.js';
import { quantizeModel, type QuantizeOptions, type QuantizeResult } from '../src/quant/quantize-model.js';
import { dequantize } from '../src/quant/quantized-layer.js';
import { dequantizeBinary } from '../src/quant/gptqt.js';
import { floatRows, getBackend } from '../src/tensor/index.js';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { readConfigJson } from '../src/io/config.js';
import { SafetensorsModel, writeSafetensors, type TensorToWrite } from '../src/io/safetensors.js';

/**
 * The protocol shared by the quality benchmarks: stories15M, 128 calibration windows of 256 tokens from
 * sotu-calib (seed 0), the first 128 windows of 256 tokens of sotu-test and moby, KL against fp32.
 */
export const TEXTS = ['sotu-test', 'moby'];

export async function protocol() {
  const backend = await getBackend();
  const dir = await pullStories15m();
  const tokenizer = loadTokenizer(dir);
  const fp = await Decoder.load(dir, backend);
  const calib = { windows: calibrationWindows(tokenizer.encode(await loadText('sotu-calib')), 128, 256, 0), seqlen: 256 };
  const tests = new Map<string, { tokens: number[]; ref: ReferenceStates; fpPpl: number }>();
  for (const t of TEXTS) {
    const tokens = tokenizer.encode(await loadText(t));
    tests.set(t, { tokens, ref: await referenceStates(fp, tokens), fpPpl: (await evaluate(fp, tokens)).ppl });
  }

  /** The fp model with every linear layer (and the head, when quantized) replaced by the quantizer's result. */
  const quantizedModel = (r: QuantizeResult): Decoder => {
    const weight = (name: string): Float32Array => {
      const q = r.layers.get(name);
      return q ? dequantize(q) : dequantizeBinary(r.binaryLayers.get(name)!);
    };
    const blocks = fp.blocks.map((b, l) => ({
      ...b,
      linear: Object.fromEntries(Object.keys(b.linear).map((n) => [n, weight(`model.layers.${l}.${n}.weight`)])) as Record<
        LinearName,
        Float32Array
      >,
    }));
    const head = r.layers.get(fp.cfg.tensors.head);
    return new Decoder(fp.cfg, backend, head ? { ...fp.outer, head: floatRows(dequantize(head)) } : fp.outer, blocks);
  };
  // stories15M ties its head to the embedding: --lm-head runs on a copy storing the head on its own (the same model)
  let untied: string | undefined;

  /** ppl and KL on each text, as table cells */
  const measure = async (opts: QuantizeOptions): Promise<string[]> => {
    if (opts.lmHead) untied ??= await untiedCopy(dir);
    const source = opts.lmHead ? untied! : dir;
    const q = quantizedModel(await quantizeModel(source, backend, opts, opts.method === 'rtn' ? undefined : calib));
    const cells: string[] = [];
    for (const t of TEXTS) {
      const { tokens, ref } = tests.get(t)!;
      const r = await evaluate(q, tokens, { ref });
      cells.push(r.ppl.toFixed(2), r.kl!.toFixed(4));
    }
    return cells;
  };

  const header = TEXTS.flatMap((t) => [`${t} ppl`, `${t} KL`]);
  const fpRow = TEXTS.flatMap((t) => [tests.get(t)!.fpPpl.toFixed(2), '0']);
  return { backend, dir, calib, measure, header, fpRow };
}

/** A copy of a tied model directory (in the temp folder) that stores its head as lm_head.weight, untied. */
async function untiedCopy(dir: string): Promise<string> {
  const out = join(mkdtempSync(join(tmpdir(), 'untied-')), 'model');
  mkdirSync(out);
  for (const f of readdirSync(dir)) if (f !== 'model.safetensors' && f !== 'config.json') copyFileSync(join(dir, f), join(out, f));
  const config = readConfigJson(dir);
  writeFileSync(join(out, 'config.json'), JSON.stringify({ ...config, tie_word_embeddings: false }));
  const st = new SafetensorsModel(dir);
  try {
    const tensors = new Map<string, TensorToWrite>(st.names().map((n) => [n, st.read(n) as TensorToWrite]));
    const T = readModelConfig(dir).tensors;
    tensors.set(T.head, st.read(T.embed) as TensorToWrite);
    await writeSafetensors(join(out, 'model.safetensors'), tensors);
  } finally {
    st.close();
  }
  process.on('exit', () => rmSync(dirname(out), { recursive: true, force: true }));
  return out;
}
