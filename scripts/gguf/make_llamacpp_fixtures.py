"""Makes GGUF files with llama.cpp's own tools, for test/gguf-read.test.ts (files we did not write).

A tiny random Llama (2 layers, hidden 256 so every linear row is whole 256-blocks and llama-quantize writes real
K-quant super-blocks) with a SentencePiece BPE tokenizer trained here on the tokenizer corpus (byte fallback, as
Llama 2's), saved as a Hugging Face directory; llama.cpp's convert_hf_to_gguf.py turns it into an F32 GGUF (the
tokenizer from tokenizer.model, as it converts Llama 2), and llama-quantize into Q4_K_M and Q2_K.

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
f32 = os.path.join(work, "tiny-llama-f32.gguf")
subprocess.run([sys.executable, os.path.join(src, "convert_hf_to_gguf.py"), model_dir, "--outtype", "f32", "--outfile", f32],
               check=True, env=env)
os.makedirs(out, exist_ok=True)
for t in ["Q4_K_M", "Q2_K"]:
    subprocess.run([os.path.join(tools, "llama-quantize"), f32, os.path.join(out, f"tiny-llama-{t}.gguf"), t], check=True)
print(work)
