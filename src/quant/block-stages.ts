import type { BlockWeights, Decoder } from '../models/index.js';

/**
 * One decoder block's true-sequential calibration ([q,k,v] → [o] → [gate,up] → [down]), run over the
 * calibration windows in chunks so that the activations held at once scale with the chunk, not with the
 * calibration set: a 7B block on 128 windows of 2048 tokens would otherwise hold its 11008-wide MLP
 * activations for all 262,144 positions at once (11.5 GB, twice over for gate and up).
 *
 * Each group's stage is one pass over the chunks: it computes the group's inputs with every earlier group
 * already quantized and hands them to `observe`; then `quantize` replaces the group's weights. What the next
 * stage needs is kept across chunks (the residual stream x, updated in place, and o_proj's inputs), so the
 * block costs one forward plus one extra gate/up product, not one forward per group as in the reference.
 *
 * With a second stream (GPTQv2's full-precision model, its own weights and hidden states) both advance in
 * lockstep, so each chunk's quantized-path and full-precision inputs meet in `observe`.
 */
export interface Stream {
  weights: BlockWeights;
  /** hidden states [windows*seqlen, D], advanced through the block in place */
  x: Float32Array;
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
  const D = model.cfg.hiddenSize;
  const attention = streams.map((s) => new Float32Array(s.x.length));
  const rowsOf = (a: Float32Array, first: number, count: number): Float32Array =>
    a.subarray(first * seqlen * D, (first + count) * seqlen * D);

  const eachChunk = async (fn: (first: number, count: number) => Promise<void>): Promise<void> => {
    for (let first = 0; first < windows; first += chunkWindows) await fn(first, Math.min(chunkWindows, windows - first));
  };
  const stage = async (
    g: number,
    compute: (s: Stream, i: number, x: Float32Array, first: number, count: number) => Promise<Float32Array>,
  ): Promise<void> => {
    await eachChunk(async (first, count) => {
      const inputs: Float32Array[] = [];
      for (const [i, s] of streams.entries()) inputs.push(await compute(s, i, rowsOf(s.x, first, count), first, count));
      await cb.observe(g, inputs, count * seqlen, count);
    });
    await cb.quantize(g);
  };

  await stage(0, (s, _, x, __, count) => model.attentionInput(s.weights, x, count * seqlen));
  await stage(1, async (s, i, x, first, count) => {
    const att = await model.attention(s.weights, layer, await model.attentionInput(s.weights, x, count * seqlen), count, seqlen);
    rowsOf(attention[i]!, first, count).set(att);
    return att;
  });
  // a parallel block (GPT-NeoX, Falcon) feeds the MLP from the block's input: attention's output joins the
  // residual stream only at the end, with the MLP's
  const parallel = model.cfg.parallel;
  await stage(2, async (s, i, x, first, count) => {
    if (!parallel) await model.addProjection(s.weights, 'o', x, rowsOf(attention[i]!, first, count), count * seqlen);
    return model.mlpInput(s.weights, x, count * seqlen);
  });
  const activation = (s: Stream, x: Float32Array, rows: number): Promise<Float32Array> =>
    model.mlpInput(s.weights, x, rows).then((h) => model.mlpActivation(s.weights, h, rows));
  await stage(3, (s, _, x, __, count) => activation(s, x, count * seqlen));
  // the block's output with all four groups quantized: the next block's calibration input
  await eachChunk(async (first, count) => {
    for (const [i, s] of streams.entries()) {
      const x = rowsOf(s.x, first, count);
      const act = await activation(s, x, count * seqlen);
      if (parallel) await model.addProjection(s.weights, 'o', x, rowsOf(attention[i]!, first, count), count * seqlen);
      await model.addProjection(s.weights, 'down', x, act, count * seqlen);
    }
  });
}
