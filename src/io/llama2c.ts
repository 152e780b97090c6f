import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkOutputPath, writeAtomically, type OnExisting, type OutputPolicy } from './atomic.js';
import { fail } from './errors.js';
import { writeSafetensors, type TensorToWrite } from './safetensors.js';
import { LlamaTokenizer } from './tokenizer.js';

/**
 * llama2.c checkpoints (the legacy .bin: 7 int32 hyper-parameters, then fp32 tensors layer-stacked) and
 * their conversion to a Hugging Face Llama directory.
 */

export interface Llama2cCheckpoint {
  /** the config.json of the converted model */
  config: Record<string, unknown>;
  vocabSize: number;
  /** Hugging Face tensor names -> fp32 data, already in HF's rotary layout */
  tensors: Map<string, TensorToWrite>;
}

export function readLlama2c(bytes: Uint8Array, what: string): Llama2cCheckpoint {
  if (bytes.byteLength < 28) fail(`${what}: truncated llama2.c checkpoint (no header)`);
  const hdr = new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 28));
  const [dim, hidden, layers, heads, kvHeads, vocabRaw, seqLen] = Array.from(hdr) as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const shared = vocabRaw > 0;
  const vocab = Math.abs(vocabRaw);
  if (![dim, hidden, layers, heads, kvHeads, vocab, seqLen].every((v) => v > 0 && v < 1 << 24) || dim % heads || heads % kvHeads) {
    fail(`${what}: not a llama2.c checkpoint (header ${Array.from(hdr).join(', ')})`);
  }
  const hd = dim / heads;
  const kvDim = hd * kvHeads;
  const sizes = {
    embed: vocab * dim,
    attnNorm: layers * dim,
    wq: layers * dim * dim,
    wk: layers * kvDim * dim,
    wv: layers * kvDim * dim,
    wo: layers * dim * dim,
    ffnNorm: layers * dim,
    w1: layers * hidden * dim,
    w2: layers * dim * hidden,
    w3: layers * hidden * dim,
    finalNorm: dim,
    rope: seqLen * hd, // two tables of seqLen * hd/2, unused
    cls: shared ? 0 : vocab * dim,
  };
  const needed = 28 + 4 * Object.values(sizes).reduce((a, b) => a + b, 0);
  if (bytes.byteLength < needed) fail(`${what}: truncated llama2.c checkpoint (${bytes.byteLength} bytes, header implies ${needed})`);
  if (bytes.byteLength > needed) {
    // llama2.c writes exactly this much: more means a wrong header (e.g. the vocab size's sign, which says whether
    // the classifier is shared) and tensors read from the wrong offsets
    fail(`${what}: ${bytes.byteLength} bytes but the header (${Array.from(hdr).join(', ')}) implies ${needed}`);
  }
  const floats = new Float32Array(bytes.buffer.slice(bytes.byteOffset + 28, bytes.byteOffset + needed));
  const bad = floats.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) fail(`${what}: NaN/Inf at float ${bad} of the weights`);
  let off = 0;
  const take = (n: number): Float32Array => floats.subarray(off, (off += n));
  const embed = take(sizes.embed);
  const attnNorm = take(sizes.attnNorm);
  const wq = take(sizes.wq);
  const wk = take(sizes.wk);
  const wv = take(sizes.wv);
  const wo = take(sizes.wo);
  const ffnNorm = take(sizes.ffnNorm);
  const w1 = take(sizes.w1);
  const w2 = take(sizes.w2);
  const w3 = take(sizes.w3);
  const finalNorm = take(sizes.finalNorm);
  take(sizes.rope);
  const cls = shared ? undefined : take(sizes.cls);

  const tensors = new Map<string, TensorToWrite>();
  const put = (name: string, shape: number[], data: Float32Array): void => {
    tensors.set(name, { dtype: 'F32', shape, data: data.slice() });
  };
  put('model.embed_tokens.weight', [vocab, dim], embed);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    const slice = (src: Float32Array, n: number): Float32Array => src.subarray(l * n, (l + 1) * n);
    put(`${p}input_layernorm.weight`, [dim], slice(attnNorm, dim));
    put(`${p}self_attn.q_proj.weight`, [dim, dim], interleavedToHalves(slice(wq, dim * dim), heads, hd, dim));
    put(`${p}self_attn.k_proj.weight`, [kvDim, dim], interleavedToHalves(slice(wk, kvDim * dim), kvHeads, hd, dim));
    put(`${p}self_attn.v_proj.weight`, [kvDim, dim], slice(wv, kvDim * dim));
    put(`${p}self_attn.o_proj.weight`, [dim, dim], slice(wo, dim * dim));
    put(`${p}post_attention_layernorm.weight`, [dim], slice(ffnNorm, dim));
    put(`${p}mlp.gate_proj.weight`, [hidden, dim], slice(w1, hidden * dim));
    put(`${p}mlp.down_proj.weight`, [dim, hidden], slice(w2, dim * hidden));
    put(`${p}mlp.up_proj.weight`, [hidden, dim], slice(w3, hidden * dim));
  }
  put('model.norm.weight', [dim], finalNorm);
  if (cls) put('lm_head.weight', [vocab, dim], cls);

  // llama2.c's model: Llama 2's layout with RMSNorm eps 1e-5 and RoPE base 10000, written as transformers does
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: dim,
    intermediate_size: hidden,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    vocab_size: vocab,
    max_position_embeddings: seqLen,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: shared,
    hidden_act: 'silu',
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
  };
  return { config, vocabSize: vocab, tensors };
}

/**
 * llama2.c rotates interleaved pairs (2i, 2i+1) of each head; Hugging Face rotates (i, i + hd/2).
 * Reorder each head's rows from [re0, im0, re1, im1, ...] to [re0, re1, ..., im0, im1, ...].
 */
function interleavedToHalves(w: Float32Array, heads: number, hd: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = hd / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      out.set(w.subarray((h * hd + 2 * i) * cols, (h * hd + 2 * i + 1) * cols), (h * hd + i) * cols);
      out.set(w.subarray((h * hd + 2 * i + 1) * cols, (h * hd + 2 * i + 2) * cols), (h * hd + half + i) * cols);
    }
  }
  return out;
}

/**
 * Write a Hugging Face Llama directory (config.json, model.safetensors, tokenizer.json) atomically; `onExisting`
 * says whether an existing outDir is refused (default) or replaced once the new one is complete.
 */
export async function convertLlama2c(
  binPath: string,
  tokenizerPath: string | undefined,
  outDir: string,
  onExisting: OnExisting = 'refuse',
): Promise<void> {
  const policy: OutputPolicy = { onExisting, inputs: [binPath, ...(tokenizerPath ? [tokenizerPath] : [])] };
  checkOutputPath(outDir, policy);
  if (!existsSync(binPath)) fail(`${binPath}: file not found`);
  if (tokenizerPath && !existsSync(tokenizerPath)) fail(`${tokenizerPath}: file not found`);
  const ckpt = readLlama2c(readFileSync(binPath), binPath);
  const tokenizer = tokenizerPath ? LlamaTokenizer.fromLlama2cBin(readFileSync(tokenizerPath), tokenizerPath, ckpt.vocabSize) : undefined;
  await writeAtomically(outDir, (tmp) => writeHfLlamaDir(tmp, ckpt, tokenizer), policy);
}

/** Write a new Hugging Face Llama directory (the caller makes it appear atomically). */
export async function writeHfLlamaDir(outDir: string, ckpt: Llama2cCheckpoint, tokenizer?: LlamaTokenizer): Promise<void> {
  mkdirSync(outDir);
  writeFileSync(join(outDir, 'config.json'), JSON.stringify(ckpt.config, null, 2) + '\n');
  writeFileSync(join(outDir, 'generation_config.json'), JSON.stringify({ bos_token_id: 1, eos_token_id: 2 }, null, 2) + '\n');
  await writeSafetensors(join(outDir, 'model.safetensors'), ckpt.tensors);
  if (tokenizer) {
    writeFileSync(join(outDir, 'tokenizer.json'), JSON.stringify(tokenizer.toTokenizerJson()));
    writeFileSync(
      join(outDir, 'tokenizer_config.json'),
      JSON.stringify(
        {
          tokenizer_class: 'LlamaTokenizerFast',
          bos_token: '<s>',
          eos_token: '</s>',
          unk_token: '<unk>',
          add_bos_token: true,
          legacy: true,
        },
        null,
        2,
      ) + '\n',
    );
  }
}
