import type { SafetensorsModel } from '../io/safetensors.js';
import { Decoder, floatEmbedding, readEmbedding, readFinal, type ModelConfig } from '../models/index.js';
import { concatArrays, rowsF32, type Backend } from '../tensor/index.js';
import { gptq, type PreparedHessian } from './gptq.js';
import { HessianAccumulator } from './hessian.js';
import type { QuantizedLayer } from './quantized-layer.js';
import { rtn } from './rtn.js';
import type { RowFile, StageSeconds } from './run-state.js';
import type { LayerInspector, LayerReport, QuantizeOptions } from './quantize-model.js';

/** The last block's outputs over the calibration windows, one file per stream, read `chunk` windows at a time. */
export interface FinalRows {
  files: RowFile[];
  windows: number;
  seqlen: number;
  chunk: number;
}

/**
 * Rows of the head swept at once: rows are independent given H, so a 128256 x 4096 head (Llama 3) never holds its
 * float64 working copy whole (4.2 GB), only a slice of about 256 MB.
 */
const SLICE_FLOATS = 2 ** 25;

/**
 * The LM head as one more linear layer after the last block (GPTQModel's `lm_head: true`). Its inputs are the
 * final states the head reads in the quantized model: the last block's outputs, quantized blocks and all, through
 * the final norm. GPTQ builds their Hessian as for any layer (GPTQv2 with the full-precision stream's too) and
 * sweeps the head's rows a slice at a time; RTN rounds it. The quantizer's grid settings apply unchanged.
 */
export async function quantizeHead(
  st: SafetensorsModel,
  cfg: ModelConfig,
  backend: Backend,
  opts: QuantizeOptions,
  rows: FinalRows | undefined,
  warn: (msg: string) => void,
  inspect?: LayerInspector,
  sliceFloats = SLICE_FLOATS,
): Promise<{ layer: QuantizedLayer; report: LayerReport; seconds: StageSeconds }> {
  const start = performance.now();
  const seconds: StageSeconds = { forward: 0, hessian: 0, sweep: 0, total: 0 };
  const name = cfg.tensors.head;
  const [V, E] = [cfg.vocabSize, cfg.embedDim];
  let hessian: HessianAccumulator | undefined;
  let prepared: PreparedHessian | undefined;
  if (rows) {
    const final = new Decoder(
      cfg,
      backend,
      { embed: floatEmbedding(new Float32Array(0)), head: floatEmbedding(new Float32Array(0)), ...readFinal(st, cfg) },
      [],
    );
    hessian = new HessianAccumulator(E, backend, rows.files.length > 1);
    for (let w = 0; w < rows.windows; w += rows.chunk) {
      const tf = performance.now();
      const count = Math.min(rows.chunk, rows.windows - w);
      const n = count * rows.seqlen;
      const inputs = await Promise.all(rows.files.map(async (f) => final.final(await f.read(w * rows.seqlen, n), n)));
      const th = performance.now();
      seconds.forward += (th - tf) / 1000;
      await hessian.add(inputs[0]!, n, count, inputs[1]);
      seconds.hessian += (performance.now() - th) / 1000;
    }
    const th = performance.now();
    await hessian.flush();
    seconds.hessian += (performance.now() - th) / 1000;
    const tp = performance.now();
    prepared = await hessian.prepare(opts, (m) => warn(`${name}: ${m}`), backend.matmul64.bind(backend));
    seconds.sweep += (performance.now() - tp) / 1000;
  }
  const ts = performance.now();
  const stored = readEmbedding(st, name, [V, E]);
  const report: LayerReport = { name, rows: V, cols: E, seconds: 0 };
  const sliceRows = Math.max(1, Math.floor(sliceFloats / E));
  const slices: QuantizedLayer[] = [];
  let loss = 0;
  for (let r0 = 0; r0 < V; r0 += sliceRows) {
    const r1 = Math.min(V, r0 + sliceRows);
    const w = rowsF32(stored, r0, r1, E);
    if (hessian) {
      const r = await gptq(w, hessian.h, r1 - r0, E, opts, {
        prepared: prepared!,
        matmulNT: backend.matmulNT.bind(backend),
        matmulNN: backend.matmulNN.bind(backend),
      });
      slices.push(r.layer);
      loss += r.loss;
      report.percdamp = r.percdamp;
    } else slices.push(rtn(w, r1 - r0, E, opts));
  }
  if (hessian) report.loss = loss;
  const layer = stackRows(slices);
  inspect?.(name, rowsF32(stored, 0, V, E), hessian?.h, layer);
  report.seconds = (performance.now() - ts) / 1000;
  seconds.sweep += report.seconds;
  seconds.total = (performance.now() - start) / 1000;
  return { layer, report, seconds };
}

/** Layers quantized as row slices of one weight (same columns, grid and column groups) as that one layer. */
function stackRows(parts: QuantizedLayer[]): QuantizedLayer {
  return {
    ...parts[0]!,
    rows: parts.reduce((s, q) => s + q.rows, 0),
    codes: concatArrays(parts.map((q) => q.codes)),
    scales: concatArrays(parts.map((q) => q.scales)),
    zeros: concatArrays(parts.map((q) => q.zeros)),
  };
}
