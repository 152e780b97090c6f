"""Makes GGUF files with llama.cpp's own tools, for test/gguf-read.test.ts (files we did not write).

Tiny random models (2 layers, hidden 256 so every linear row is whole 256-blocks and llama-quantize writes real
K-quant super-blocks), saved as Hugging Face directories, turned into F32 GGUFs by llama.cpp's convert_hf_to_gguf.py
and quantized by llama-quantize:
- a Llama with a SentencePiece BPE tokenizer trained here on the tokenizer corpus (byte fallback, as Llama 2's;
  the converter reads tokenizer.model, as it converts Llama 2): Q4_K_M and Q2_K;
- a Qwen2 (q/k/v biases) with a byte-level BPE tokenizer.json trained here with GPT-2's pre-tokenizer: Q4_K_M and Q2_K.
  The converter names a byte-level BPE's pre-tokenizer by hashing how it tokenizes a probe text, and knows only
  released tokenizers' hashes; this one's pre-tokenizer is GPT-2's exactly, so the converter is told "gpt-2"
  (its get_vocab_base_pre is replaced for this run; everything else is the converter as shipped).

Run by scripts/gguf/make_llamacpp_fixtures.sh, which builds llama-quantize and clones llama.cpp's source.
Usage: python make_llamacpp_fixtures.py LLAMA_SRC LLAMA_TOOLS OUT_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM

src, tools, out = sys.argv[1:4]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
corpus = json.load(open(os.path.join(root, "test", "fixtures", "tokenizers", "corpus.json"), encoding="utf-8"))
work = tempfile.mkdtemp(prefix="llamacpp-fx-")
model_dir = os.path.join(work, "tiny-llama")
os.makedirs(model_dir)

# SentencePiece BPE as Llama 2's: byte fallback, a dummy prefix, <unk> <s> </s> at ids 0, 1, 2
text = os.path.join(work, "corpus.txt")
with open(text, "w", encoding="utf-8") as f:
    for _ in range(4):
        for s in corpus:
            f.write(s.replace("\n", " ") + "\n")
spm.SentencePieceTrainer.train(
    input=text,
    model_prefix=os.path.join(model_dir, "tokenizer"),
    model_type="bpe",
    vocab_size=512,
    byte_fallback=True,
    character_coverage=0.995,
    hard_vocab_limit=False,
    split_digits=True,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
)
os.remove(os.path.join(model_dir, "tokenizer.vocab"))
vocab = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model")).vocab_size()

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=vocab,
    hidden_size=256,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    # large enough weights that next-token distributions are far from uniform
    initializer_range=0.08,
)
model = LlamaForCausalLM(config).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.2 * torch.randn_like(p))
    logits = model(torch.arange(1, 33)[None]).logits
print("logits std", float(logits.std()))
model.save_pretrained(model_dir, safe_serialization=True)
json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "tokenizer_class": "LlamaTokenizer"}, open(os.path.join(model_dir, "tokenizer_config.json"), "w"))

env = dict(os.environ, PYTHONPATH=os.path.join(src, "gguf-py"))
os.makedirs(out, exist_ok=True)


def convert(model_dir, name, types, pre=None):
    f32 = os.path.join(work, f"{name}-f32.gguf")
    argv = [os.path.join(src, "convert_hf_to_gguf.py"), model_dir, "--outtype", "f32", "--outfile", f32]
    if pre is None:
        subprocess.run([sys.executable, *argv], check=True, env=env)
    else:
        code = (f"import sys, runpy; sys.path.insert(0, {src!r}); import conversion.base as b; "
                f"b.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}; sys.argv = {argv!r}; "
                f"runpy.run_path({argv[0]!r}, run_name='__main__')")
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
    for t in types:
        subprocess.run([os.path.join(tools, "llama-quantize"), f32, os.path.join(out, f"{name}-{t}.gguf"), t], check=True)


convert(model_dir, "tiny-llama", ["Q4_K_M", "Q2_K"])

# Qwen2 with a byte-level BPE: GPT-2's pre-tokenizer and decoder, <|endoftext|> at id 0
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM

qwen_dir = os.path.join(work, "tiny-qwen2")
os.makedirs(qwen_dir)
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
tok.train([text], trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
tok.save(os.path.join(qwen_dir, "tokenizer.json"))
json.dump({"eos_token": "<|endoftext|>", "bos_token": None, "tokenizer_class": "PreTrainedTokenizerFast"},
          open(os.path.join(qwen_dir, "tokenizer_config.json"), "w"))
torch.manual_seed(1)
qconfig = Qwen2Config(
    vocab_size=tok.get_vocab_size(),
    hidden_size=256,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    use_sliding_window=False,
    bos_token_id=None,
    eos_token_id=0,
    initializer_range=0.08,
)
qwen = Qwen2ForCausalLM(qconfig).eval()
with torch.no_grad():
    for name, p in qwen.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.2 * torch.randn_like(p))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn_like(p))
    print("qwen2 logits std", float(qwen(torch.arange(1, 33)[None]).logits.std()))
qwen.save_pretrained(qwen_dir, safe_serialization=True)
convert(qwen_dir, "tiny-qwen2", ["Q4_K_M", "Q2_K"], pre="gpt-2")
print(work)
