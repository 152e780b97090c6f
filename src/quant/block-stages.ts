import type { BlockWeights, Decoder } from '../models/index.js';
import type { RowFile } from './run-state.js';

/**
 * One decoder block's true-sequential calibration ([q,k,v] → [o] → [gate,up] → [down]), run over the
 * calibration windows in chunks so that the activations held at once scale with the chunk, not with the
 * calibration set: a 7B block on 128 windows of 2048 tokens would otherwise hold its 11008-wide MLP
 * activations for all 262,144 positions at once (11.5 GB, twice over for gate and up).
 *
 * Each group's stage is one pass over the chunks: it computes the group's inputs with every earlier group
 * already quantized and hands them to `observe`; then `quantize` replaces the group's weights. What the next
 * stage needs is kept across chunks (the residual stream after attention, o_proj's and down_proj's inputs), so
 * the block costs one forward, not one forward per group as in the reference. (Recomputing down_proj's inputs
 * for the block's output instead of keeping them was a second gate/up product: 45% more flop at Llama-2-7B's
 * shape, against writing and reading back 4·intermediate bytes a position.)
 *
 * The hidden states live in files (RowFile), read and written one chunk at a time: memory holds one chunk's
 * activations whatever the calibration set's size. With a second stream (GPTQv2's full-precision model, its own
 * weights and hidden states) both advance in lockstep, so each chunk's quantized-path and full-precision inputs
 * meet in `observe`.
 */
export interface Stream {
  weights: BlockWeights;
  /** the block's input hidden states [windows*seqlen, D]: read only, so a killed run can redo the block */
  input: RowFile;
  /** the block's output, written as it forms: the next block's input */
  output: RowFile;
  /** o_proj's inputs [windows*seqlen, heads*headDim], from the attention stage to the one after it */
  attention: RowFile;
  /** down_proj's inputs [windows*seqlen, intermediate], from its stage to the block's output */
  activation: RowFile;
}

export interface StageCallbacks {
  /** inputs of group g for windows [first, first + count): one array per stream, [count*seqlen, cols] */
  observe(g: number, inputs: Float32Array[], rows: number, count: number): Promise<void>;
  quantize(g: number): Promise<void>;
}

export async function calibrateBlock(
  model: Decoder,
  layer: number,
  streams: Stream[],
  windows: number,
  seqlen: number,
  chunkWindows: number,
  cb: StageCallbacks,
): Promise<void> {
  const eachChunk = async (fn: (first: number, count: number) => Promise<void>): Promise<void> => {
    for (let first = 0; first < windows; first += chunkWindows) await fn(first, Math.min(chunkWindows, windows - first));
  };
  const stage = async (g: number, compute: (s: Stream, row: number, rows: number) => Promise<Float32Array>): Promise<void> => {
    await eachChunk(async (first, count) => {
      const inputs: Float32Array[] = [];
      for (const s of streams) inputs.push(await compute(s, first * seqlen, count * seqlen));
      await cb.observe(g, inputs, count * seqlen, count);
    });
    await cb.quantize(g);
  };

  await stage(0, async (s, row, rows) => model.attentionInput(s.weights, await s.input.read(row, rows), rows));
  await stage(1, async (s, row, rows) => {
    const h = await model.attentionInput(s.weights, await s.input.read(row, rows), rows);
    const att = await model.attention(s.weights, layer, h, rows / seqlen, seqlen);
    await s.attention.write(row, att);
    return att;
  });
  // a parallel block (GPT-NeoX, Falcon) feeds the MLP from the block's input: attention's output joins the
  // residual stream only at the end, with the MLP's
  const parallel = model.cfg.parallel;
  await stage(2, async (s, row, rows) => {
    const x = await s.input.read(row, rows);
    if (!parallel) await model.addProjection(s.weights, 'o', x, await s.attention.read(row, rows), rows);
    await s.output.write(row, x);
    return model.mlpInput(s.weights, x, rows);
  });
  await stage(3, async (s, row, rows) => {
    const x = await s.output.read(row, rows);
    const act = await model.mlpActivation(s.weights, await model.mlpInput(s.weights, x, rows), rows);
    await s.activation.write(row, act);
    return act;
  });
  // the block's output with all four groups quantized: the next block's calibration input
  await eachChunk(async (first, count) => {
    const [row, rows] = [first * seqlen, count * seqlen];
    for (const s of streams) {
      const x = await s.output.read(row, rows);
      if (parallel) await model.addProjection(s.weights, 'o', x, await s.attention.read(row, rows), rows);
      await model.addProjection(s.weights, 'down', x, await s.activation.read(row, rows), rows);
      await s.output.write(row, x);
    }
  });
}
