import type { Backend } from './backend.js';
import { refBackend } from './ref.js';

export type {
  Activation,
  Backend,
  AttentionShape,
  HalfKvCache,
  KvShape,
  HeadStats,
  HeadStatsOptions,
  LinearKernel,
  LinearOptions,
  PackedLinearWeights,
  ActivationPrecision,
  ResidualMlpKernel,
  ResidualMlpWeights,
} from './backend.js';
export { concatArrays, floatRows, forVocabSlices, headLogits, rowsF32, widenRowsInto, SLICE_FLOATS, type StoredRows } from './rows.js';

/**
 * The backend the library uses: onnxruntime when it loads, else the plain-TS reference (slow but always
 * there). GPTQ_TS_BACKEND=ref forces the reference.
 */
let chosen: Promise<Backend> | undefined;
export function getBackend(): Promise<Backend> {
  return (chosen ??= (async () => {
    if (process.env['GPTQ_TS_BACKEND'] === 'ref') return refBackend;
    try {
      return (await import('./ort.js')).ortBackend;
    } catch (e) {
      process.emitWarning(`onnxruntime-node unavailable (${(e as Error).message}); using the slow reference kernels`);
      return refBackend;
    }
  })());
}
