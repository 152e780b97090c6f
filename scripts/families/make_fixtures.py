#!/usr/bin/env python3
"""Build tiny random Hugging Face checkpoints plus golden logits for the family tests.

Each fixture is a folder test/fixtures/families/<name>/ with
  config.json, generation_config.json (when save_pretrained writes one),
  model.safetensors (float32, as save_pretrained writes it; tied weights stay tied),
  golden.json (versions, input_ids, logits shape, mean next-token NLL, notes),
  logits.f32 (raw little-endian float32 logits of transformers' own eager forward).

Usage (needs torch, transformers, safetensors, numpy; see the README beside the fixtures):
  python scripts/families/make_fixtures.py                # all fixtures
  python scripts/families/make_fixtures.py --only llama gemma2
  python scripts/families/make_fixtures.py --list

Only the fixture folders named in FIXTURES (and their legacy-config twins) are
touched; everything else in test/fixtures/families/ is left alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, CONFIG_MAPPING

REPO = Path(__file__).resolve().parents[2]
OUT_ROOT = REPO / "test" / "fixtures" / "families"

BATCH = 2
SEQ = 40
VOCAB = 256

# Weight re-draw (after the model is built from config): every parameter is
# overwritten so that every component visibly moves the logits.
STD_MATRIX = 0.2  # Linear / Conv1D weights (fan-in 64..256)
STD_EMBED = 0.5  # token and learned position embeddings
STD_BIAS = 0.1  # every bias
STD_NORM = 0.2  # norm gains: 1 + 0.2*randn, or 0.2*randn for (1 + w) norms
# Norm classes whose forward multiplies by (1 + weight); transformers
# initialises their weight to zeros.
OFFSET_NORMS = {"GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm"}

# Shapes shared by (almost) every fixture.
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def base(**over):
    d = dict(BASE)
    d.update(over)
    return d


@dataclass
class Fixture:
    name: str
    model_type: str
    config: dict
    notes: str
    # twins: (name, rewrite(config_dict) -> config_dict, notes) sharing weights/golden
    twins: list = field(default_factory=list)
    # --check: (label, config overrides) that must each change the logits
    ablations: list = field(default_factory=list)


# --------------------------------------------------------------------------- legacy rewrites


def legacy_rope_llama(cfg: dict) -> dict:
    """transformers 5 `rope_parameters` -> transformers 4 `rope_theta` + `rope_scaling`."""
    cfg = copy.deepcopy(cfg)
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = rp  # keeps rope_type, factor, low/high_freq_factor, original_max_position_embeddings
    return cfg


def legacy_rope_neox(cfg: dict) -> dict:
    """transformers 5 `rope_parameters` -> GPT-NeoX's `rotary_pct` + `rotary_emb_base` (Pythia configs)."""
    cfg = copy.deepcopy(cfg)
    rp = cfg.pop("rope_parameters")
    assert rp["rope_type"] == "default", rp
    cfg["rotary_pct"] = rp["partial_rotary_factor"]
    cfg["rotary_emb_base"] = rp["rope_theta"]
    cfg["rope_scaling"] = None
    return cfg


def legacy_rope_gemma3(cfg: dict) -> dict:
    """transformers 5 per-layer-type `rope_parameters` -> Gemma 3 hub layout:
    `rope_theta` (global), `rope_local_base_freq` (sliding), `rope_scaling` (global only),
    `sliding_window_pattern` instead of `layer_types`."""
    cfg = copy.deepcopy(cfg)
    rp = cfg.pop("rope_parameters")
    full = dict(rp["full_attention"])
    slide = dict(rp["sliding_attention"])
    assert slide["rope_type"] == "default", slide
    cfg["rope_theta"] = full.pop("rope_theta")
    cfg["rope_local_base_freq"] = slide["rope_theta"]
    cfg["rope_scaling"] = full if full.get("rope_type", "default") != "default" else None
    lt = cfg.pop("layer_types")
    # Hub configs give the period: every Nth layer is global.
    period = lt.index("full_attention") + 1
    expect = ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(len(lt))]
    assert lt == expect, (lt, expect)
    cfg["sliding_window_pattern"] = period
    cfg.pop("_sliding_window_pattern", None)
    return cfg


def legacy_gemma2(cfg: dict) -> dict:
    """transformers 5 -> Gemma 2 hub layout: no `layer_types` (even layers slide), top-level `rope_theta`."""
    cfg = copy.deepcopy(cfg)
    lt = cfg.pop("layer_types")
    assert lt == ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(len(lt))], lt
    rp = cfg.pop("rope_parameters")
    assert rp["rope_type"] == "default", rp
    cfg["rope_theta"] = rp["rope_theta"]
    return cfg


def legacy_phi3(cfg: dict) -> dict:
    """transformers 5 `rope_parameters` -> Phi-3 hub layout (`rope_theta`, `rope_scaling` with
    `type: longrope` and the factor lists; original_max_position_embeddings top level)."""
    cfg = copy.deepcopy(cfg)
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    prf = rp.pop("partial_rotary_factor", 1.0)
    if prf != 1.0:
        cfg["partial_rotary_factor"] = prf
    rp.pop("original_max_position_embeddings", None)
    rtype = rp.pop("rope_type")
    cfg["rope_scaling"] = None if rtype == "default" else {"type": rtype, **rp}
    return cfg


# --------------------------------------------------------------------------- fixture table

HD = 16  # head_dim for hidden 64 / 4 heads
LONG_SHORT = [1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 1.7, 2.0]  # len head_dim/2
LONG_LONG = [1.0, 1.25, 1.6, 2.2, 3.0, 4.5, 6.0, 8.0]

FIXTURES: list[Fixture] = [
    Fixture("llama", "llama", base(tie_word_embeddings=False),
            "Llama-2 layout: RMSNorm, SwiGLU MLP, GQA 4q/2kv, default RoPE theta 10000, untied lm_head."),
    Fixture("llama-tied", "llama", base(tie_word_embeddings=True),
            "As llama with tie_word_embeddings=true: model.safetensors holds only model.embed_tokens.weight "
            "(no lm_head.weight); logits use the embedding matrix."),
    Fixture("llama-bias", "llama", base(attention_bias=True, mlp_bias=True),
            "attention_bias=true (q/k/v/o biases) and mlp_bias=true (gate/up/down biases)."),
    Fixture("llama-head-dim", "llama", base(head_dim=32),
            "head_dim=32 with hidden 64 and 4 heads (q_proj 64->128, k/v 64->64, o_proj 128->64); "
            "attention scale 1/sqrt(32); RoPE over 32 dims."),
    Fixture("llama-gelu", "llama", base(hidden_act="gelu_pytorch_tanh"),
            "hidden_act=gelu_pytorch_tanh in the gated MLP: down(gelu_tanh(gate(x)) * up(x))."),
    Fixture("llama-rope-linear", "llama",
            base(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
            "Linear RoPE scaling, factor 2: positions divided by 2 (inv_freq / 2)."),
    Fixture("llama-rope-dynamic", "llama",
            base(max_position_embeddings=32,
                 rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
            "Dynamic NTK scaling, factor 2, max_position_embeddings 32 < seq 40. transformers recomputes "
            "inv_freq ONCE per forward from seq_len = max(position_ids)+1 = 40 and uses it for ALL positions: "
            "base' = base * (factor*seq_len/max_pos - (factor-1)) ** (dim/(dim-2)) = 10000 * 1.5**(16/14)."),
    Fixture("llama-rope-llama3", "llama",
            base(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                                  "rope_theta": 10000.0}),
            "Llama-3.1 RoPE scaling: factor 8, low_freq_factor 1, high_freq_factor 4, "
            "original_max_position_embeddings 32. With head_dim 16 / theta 1e4 the 8 frequencies hit all three "
            "regimes (wavelen < 8 kept, 8..32 smoothed, > 32 divided by 8). Written in transformers 5 layout "
            "(rope_parameters).",
            twins=[("llama-rope-llama3-legacy", legacy_rope_llama,
                    "SAME weights, input_ids and logits as llama-rope-llama3; only config.json differs: rewritten "
                    "to the transformers 4 / hub layout (top-level rope_theta + rope_scaling dict with rope_type "
                    "llama3). transformers 5 loads it to identical logits (checked by make_fixtures.py).")]),
    Fixture("llama-rope-yarn", "llama",
            base(rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                                  "rope_theta": 10000.0}),
            "YaRN: factor 4, original_max_position_embeddings 32 (= 128/4, so transformers' consistency check is "
            "quiet), beta_fast 32 / beta_slow 1 defaults, truncate default true; attention_factor defaults to "
            "0.1*ln(4)+1 and multiplies cos and sin."),
    Fixture("llama-rope-longrope", "llama",
            base(rope_parameters={"rope_type": "longrope", "short_factor": LONG_SHORT, "long_factor": LONG_LONG,
                                  "original_max_position_embeddings": 32, "rope_theta": 10000.0}),
            "LongRoPE: short_factor/long_factor lists of length head_dim/2 = 8, original_max_position_embeddings "
            "32. transformers requires rope_type, short_factor, long_factor, original_max_position_embeddings; "
            "factor and attention_factor are optional. No factor given, so factor = max_position_embeddings / "
            "original = 128/32 = 4 and attention_factor = sqrt(1 + ln(4)/ln(32)) (multiplies cos and sin). "
            "seq_len 40 > 32 so long_factor is used for ALL positions of the forward: "
            "inv_freq[i] = 1 / (long_factor[i] * theta**(2i/dim))."),
    Fixture("mistral", "mistral", base(sliding_window=16),
            "Mistral: Llama layout with sliding_window 16 on every layer (query q attends keys k with "
            "q-16 < k <= q, i.e. 16 keys including itself)."),
    Fixture("qwen2", "qwen2", base(use_sliding_window=False, tie_word_embeddings=False),
            "Qwen2: q/k/v projections have biases (o_proj none); use_sliding_window false."),
    Fixture("qwen3", "qwen3", base(head_dim=HD, use_sliding_window=False, tie_word_embeddings=False),
            "Qwen3: per-head RMSNorm on q and k (q_norm/k_norm weight [head_dim]) applied before RoPE; "
            "no q/k/v biases; head_dim given explicitly (16)."),
    Fixture("phi3", "phi3", base(original_max_position_embeddings=128, pad_token_id=0),
            "Phi-3: fused qkv_proj [(4+2+2)*16, 64] and gate_up_proj [2*128, 64] (first half gate, second up); "
            "default RoPE; rope_parameters carries partial_rotary_factor 1.0.",
            twins=[("phi3-legacy", legacy_phi3,
                    "SAME weights/golden as phi3; config.json in the Phi-3 hub layout (rope_theta, rope_scaling null).")]),
    Fixture("phi3-partial-rotary", "phi3", base(original_max_position_embeddings=128, pad_token_id=0,
                                                partial_rotary_factor=0.5),
            "Phi-3 with partial_rotary_factor 0.5 (as Phi-4-mini, model_type phi3, uses 0.75): RoPE on the "
            "first 8 of 16 dims of each head, the rest pass through; transformers 5 writes it inside "
            "rope_parameters (Phi-4-mini's hub config has it top level)."),
    Fixture("phi3-longrope", "phi3",
            base(original_max_position_embeddings=32, pad_token_id=0,
                 rope_parameters={"rope_type": "longrope", "short_factor": LONG_SHORT, "long_factor": LONG_LONG,
                                  "rope_theta": 10000.0}),
            "Phi-3 with LongRoPE as Phi-3-128k configs do it: original_max_position_embeddings 32 at top level "
            "(Phi3 copies it into rope_parameters), max_position_embeddings 128, no factor -> factor 4, "
            "attention_factor sqrt(1+ln4/ln32). seq 40 > 32 so long_factor applies to all positions.",
            twins=[("phi3-longrope-legacy", legacy_phi3,
                    "SAME weights/golden as phi3-longrope; config.json in the Phi-3 hub layout: rope_theta, "
                    "rope_scaling {type: longrope, short_factor, long_factor}, top-level "
                    "original_max_position_embeddings.")]),
    Fixture("gemma", "gemma", base(head_dim=HD, hidden_act="gelu_pytorch_tanh"),
            "Gemma: embeddings scaled by sqrt(hidden)=8 (computed in the activation dtype), RMSNorm computes "
            "x*(1+w) (weights stored as w, drawn ~0.2*randn), GeGLU MLP (gelu_pytorch_tanh), tied lm_head, "
            "head_dim 16 explicit."),
    Fixture("gemma2", "gemma2",
            base(num_hidden_layers=3, head_dim=HD, sliding_window=16, query_pre_attn_scalar=32,
                 attn_logit_softcapping=3.0, final_logit_softcapping=5.0),
            "Gemma 2: 3 layers, layer_types [sliding, full, sliding] (sliding_window 16), attention scale "
            "query_pre_attn_scalar**-0.5 = 32**-0.5 (not head_dim), attention-score soft-capping "
            "tanh(s/3)*3 before the mask, final logit soft-capping tanh(l/5)*5, sandwich norms "
            "(input/post_attention/pre_feedforward/post_feedforward, all (1+w)), embeddings *sqrt(64), tied.",
            twins=[("gemma2-legacy", legacy_gemma2,
                    "SAME weights/golden as gemma2; config.json in the Gemma 2 hub layout: no layer_types "
                    "(alternation implicit: even layers sliding), top-level rope_theta.")]),
    Fixture("gemma3_text", "gemma3_text",
            base(num_hidden_layers=3, head_dim=HD, sliding_window=16, query_pre_attn_scalar=32,
                 layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                 sliding_window_pattern=2,  # only so the saved `_sliding_window_pattern` agrees with layer_types
                 rope_parameters={
                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                     "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                 }),
            "Gemma 3 text: 3 layers, layer_types [sliding, full, sliding] (sliding_window 16); per-layer-type "
            "RoPE: sliding layers theta 1e4 default, full layers theta 1e6 with linear scaling factor 2 (like "
            "gemma-3-4b+ which use factor 8); q_norm/k_norm per head ((1+w) RMSNorm), sandwich norms, "
            "query_pre_attn_scalar 32, embeddings *sqrt(64), tied, no soft-capping.",
            twins=[("gemma3_text-legacy", legacy_rope_gemma3,
                    "SAME weights/golden as gemma3_text; config.json in the Gemma 3 hub layout: rope_theta 1e6 + "
                    "rope_scaling {rope_type linear, factor 2} for global layers, rope_local_base_freq 1e4, "
                    "sliding_window_pattern 2 instead of layer_types.")]),
    Fixture("olmo2", "olmo2", base(),
            "OLMo 2: norm AFTER attention and MLP (post_attention_layernorm / post_feedforward_layernorm on the "
            "sublayer outputs, no input norm), q_norm/k_norm RMSNorm over the whole projection "
            "(q_norm [64], k_norm [32] for 2 kv heads) before RoPE."),
    Fixture("granite", "granite",
            base(embedding_multiplier=4.0, residual_multiplier=0.5, attention_multiplier=0.1,
                 logits_scaling=2.0),
            "Granite: embeddings * embedding_multiplier (4), each residual add is x + residual_multiplier*f(x) "
            "(0.5), attention scores * attention_multiplier (0.1, replaces 1/sqrt(head_dim)), logits DIVIDED "
            "by logits_scaling (2)."),
    # ---- the paper's families
    Fixture("opt", "opt",
            dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=128, do_layer_norm_before=True, dropout=0.0,
                 pad_token_id=1, bos_token_id=2, eos_token_id=2),
            "OPT (pre-LN, do_layer_norm_before true, like 125m/1.3b+): learned positions with offset 2 "
            "(embed_positions has max_position_embeddings+2 rows; position p uses row p+2), ReLU MLP fc1/fc2, "
            "biases everywhere, final_layer_norm, tied lm_head. No GQA in OPT (kv heads = 4). "
            "q is scaled by head_dim**-0.5 after q_proj (bias included)."),
    Fixture("opt-post-ln", "opt",
            dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=128, do_layer_norm_before=False, dropout=0.0,
                 pad_token_id=1, bos_token_id=2, eos_token_id=2),
            "OPT post-LN (do_layer_norm_before false, like opt-350m): LayerNorm after each residual add; "
            "NO final_layer_norm module (not in the checkpoint)."),
    Fixture("opt-proj", "opt",
            dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=128, do_layer_norm_before=False, word_embed_proj_dim=32,
                 dropout=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2),
            "OPT-350m layout: word_embed_proj_dim 32 != hidden 64: embed_tokens [256,32] -> project_in "
            "(Linear 32->64, no bias) + positions (64-wide); project_out (64->32, no bias) before the tied "
            "lm_head [256,32]. Post-LN (do_layer_norm_before false) like the real opt-350m."),
    Fixture("bloom", "bloom",
            dict(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4, pad_token_id=3, bos_token_id=1,
                 eos_token_id=2),
            "BLOOM: ALiBi (no positional embeddings; slopes for 4 heads 2**-2, 2**-4, 2**-6, 2**-8), "
            "word_embeddings_layernorm after the embedding, fused query_key_value laid out per head "
            "[head, (q,k,v), head_dim], GELU (tanh form) MLP 64->256->64 (4*hidden, fixed by the "
            "architecture; intermediate 128 not configurable), biases everywhere, tied lm_head. No GQA."),
    Fixture("gpt2", "gpt2",
            dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=128,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2),
            "GPT-2: learned positions (wpe), Conv1D weights stored TRANSPOSED as [in, out] "
            "(c_attn [64,192] = q|k|v, c_proj, c_fc [64,128], mlp c_proj [128,64]), gelu_new, pre-LN, "
            "ln_f, tied lm_head (only transformer.wte.weight saved). No GQA."),
    Fixture("gpt_neox", "gpt_neox",
            dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=128, use_parallel_residual=True,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                 tie_word_embeddings=False, bos_token_id=0, eos_token_id=2),
            "GPT-NeoX/Pythia: use_parallel_residual true (x + attn(ln1(x)) + mlp(ln2(x))), rotary on the first "
            "half of each head (rotary_pct 0.5 -> 8 of 16 dims; written as rope_parameters.partial_rotary_factor), "
            "fused query_key_value laid out per head [head, (q,k,v), head_dim], biases, gelu, untied embed_out. "
            "No GQA.",
            twins=[("gpt_neox-legacy", legacy_rope_neox,
                    "SAME weights/golden as gpt_neox; config.json in the Pythia hub layout "
                    "(rotary_pct 0.5, rotary_emb_base 10000, no rope_parameters).")]),
    Fixture("falcon", "falcon",
            dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                 new_decoder_architecture=True, multi_query=False, parallel_attn=True, bias=False,
                 ffn_hidden_size=128, max_position_embeddings=128, alibi=False, bos_token_id=1, eos_token_id=2),
            "Falcon new_decoder_architecture (40b/180b style): num_kv_heads 2, fused query_key_value grouped per "
            "kv head [kv_head, (q_per_kv=2 queries, k, v), head_dim]; two layernorms ln_attn/ln_mlp "
            "(num_ln_in_parallel_attn 2), parallel attention+MLP, rotary over full head_dim, GELU, no biases, "
            "tied lm_head."),
    Fixture("falcon-mqa", "falcon",
            dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
                 ffn_hidden_size=128, max_position_embeddings=128, alibi=False, bos_token_id=1, eos_token_id=2),
            "Falcon-7b style: multi_query true (1 shared k/v head), new_decoder_architecture false, "
            "parallel_attn true with ONE input_layernorm shared by attention and MLP; fused query_key_value "
            "[4*16 q | 16 k | 16 v, 64]; rotary, GELU, no biases, tied lm_head."),
]


DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
NO_WINDOW = 1000  # a window longer than the sequence: same as no window

# Config changes that `--check` applies to each written fixture; every one must
# move the logits, which shows the feature is really exercised by the golden.
ABLATIONS: dict[str, list] = {
    "llama-gelu": [("hidden_act silu", dict(hidden_act="silu"))],
    "llama-rope-linear": [("default rope", dict(rope_parameters=DEFAULT_ROPE))],
    "llama-rope-dynamic": [("default rope", dict(rope_parameters=DEFAULT_ROPE))],
    "llama-rope-llama3": [("default rope", dict(rope_parameters=DEFAULT_ROPE)),
                          ("linear factor 8", dict(rope_parameters={"rope_type": "linear", "factor": 8.0,
                                                                    "rope_theta": 10000.0}))],
    "llama-rope-yarn": [("default rope", dict(rope_parameters=DEFAULT_ROPE)),
                        ("attention_factor 1", dict(rope_parameters={
                            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                            "rope_theta": 10000.0, "attention_factor": 1.0}))],
    "llama-rope-longrope": [("default rope", dict(rope_parameters=DEFAULT_ROPE)),
                            ("short factors as long", dict(rope_parameters={
                                "rope_type": "longrope", "short_factor": LONG_SHORT, "long_factor": LONG_SHORT,
                                "original_max_position_embeddings": 32, "rope_theta": 10000.0}))],
    "mistral": [("no sliding window", dict(sliding_window=NO_WINDOW))],
    "phi3-longrope": [("short factors as long", dict(rope_parameters={
        "rope_type": "longrope", "short_factor": LONG_SHORT, "long_factor": LONG_SHORT, "rope_theta": 10000.0}))],
    "phi3-partial-rotary": [("full rotary", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                   "partial_rotary_factor": 1.0}))],
    "gemma2": [("no sliding window", dict(sliding_window=NO_WINDOW)),
               ("no attn softcap", dict(attn_logit_softcapping=None)),
               ("no final softcap", dict(final_logit_softcapping=None)),
               ("query_pre_attn_scalar = head_dim", dict(query_pre_attn_scalar=HD))],
    "gemma3_text": [("no sliding window", dict(sliding_window=NO_WINDOW)),
                    ("query_pre_attn_scalar = head_dim", dict(query_pre_attn_scalar=HD)),
                    ("global rope unscaled", dict(rope_parameters={
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})),
                    ("local theta = global", dict(rope_parameters={
                        "sliding_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}}))],
    "granite": [("embedding_multiplier 1", dict(embedding_multiplier=1.0)),
                ("residual_multiplier 1", dict(residual_multiplier=1.0)),
                ("attention_multiplier 1/sqrt(hd)", dict(attention_multiplier=HD ** -0.5)),
                ("logits_scaling 1", dict(logits_scaling=1.0))],
    "gpt_neox": [("full rotary", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                        "partial_rotary_factor": 1.0})),
                 ("sequential residual", dict(use_parallel_residual=False))],
}
for _fx in FIXTURES:
    _fx.ablations = ABLATIONS.get(_fx.name, [])

# Parameters that cannot move the logits whatever their value: a key bias with
# no rotary embedding after it adds q.b_k to every score of a query, and softmax
# ignores a per-row constant. (Fused q|k|v biases are not isolated, so only OPT.)
INVARIANT = {"opt": "self_attn.k_proj.bias"}
assert set(ABLATIONS) <= {fx.name for fx in FIXTURES}


# --------------------------------------------------------------------------- helpers


def seed_for(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def build_config(fx: Fixture):
    cls = CONFIG_MAPPING[fx.model_type]
    cfg = cls(**copy.deepcopy(fx.config))
    return cfg


def redraw_parameters(model: torch.nn.Module, gen: torch.Generator) -> list[str]:
    """Overwrite every parameter; return a log line per parameter."""
    owner = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owner.setdefault(id(p), (mname, mod, pname))
    log = []
    with torch.no_grad():
        for full, p in model.named_parameters():  # tied parameters appear once
            mname, mod, pname = owner[id(p)]
            cls = type(mod).__name__
            if pname == "bias":
                kind = "bias"
                new = torch.randn(p.shape, generator=gen) * STD_BIAS
            elif isinstance(mod, torch.nn.Embedding):
                kind = "embed"
                new = torch.randn(p.shape, generator=gen) * STD_EMBED
            elif "Norm" in cls and pname == "weight":
                if cls in OFFSET_NORMS:
                    assert torch.all(p == 0), f"{full}: expected zero-initialised (1+w) norm weight"
                    kind = "norm(1+w)"
                    new = torch.randn(p.shape, generator=gen) * STD_NORM
                else:
                    assert torch.all(p == 1), f"{full}: expected one-initialised norm weight ({cls})"
                    kind = "norm"
                    new = 1.0 + torch.randn(p.shape, generator=gen) * STD_NORM
            elif p.dim() == 2:
                kind = "matrix"
                new = torch.randn(p.shape, generator=gen) * STD_MATRIX
            else:
                raise RuntimeError(f"don't know how to draw {full} ({cls}.{pname}, shape {tuple(p.shape)})")
            p.copy_(new.to(p.dtype))
            log.append(f"{full} {tuple(p.shape)} {kind} ({cls})")
    return log


def forward_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=False)
    return out.logits.detach().to(torch.float32)


def mean_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> float:
    lp = torch.log_softmax(logits[:, :-1, :].to(torch.float64), dim=-1)
    tgt = input_ids[:, 1:]
    nll = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return float(nll.mean())


def load_eager(folder: Path):
    m = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager", dtype=torch.float32)
    m.eval()
    return m


def golden_text(golden: dict) -> str:
    """JSON with one line per input sequence (the rest indented as usual)."""
    g = dict(golden)
    ids = g.pop("input_ids")
    text = json.dumps(g, indent=2)
    rows = ",\n".join("    " + json.dumps(r, separators=(",", ":")) for r in ids)
    head, rest = text.split("\n", 1)
    return head + '\n  "input_ids": [\n' + rows + "\n  ],\n" + rest + "\n"


def write_fixture(fx: Fixture, verbose: bool = False) -> dict:
    seed = seed_for(fx.name)
    torch.manual_seed(seed)
    cfg = build_config(fx)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    log = redraw_parameters(model, gen)
    if verbose:
        print("\n".join("    " + l for l in log))
    ids_gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=ids_gen, dtype=torch.int64)

    logits = forward_logits(model, input_ids)
    assert logits.shape == (BATCH, SEQ, VOCAB), logits.shape
    assert torch.isfinite(logits).all(), "non-finite logits"
    std = float(logits.std())
    assert std > 0.5, f"degenerate logits std {std}"
    nll = mean_nll(logits, input_ids)

    out_dir = OUT_ROOT / fx.name
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td) / fx.name
        model.save_pretrained(str(tmp), safe_serialization=True)
        # round trip: the saved folder reproduces the logits exactly
        re_logits = forward_logits(load_eager(tmp), input_ids)
        if not torch.equal(re_logits, logits):
            raise RuntimeError(f"{fx.name}: reload differs, max |d| {float((re_logits - logits).abs().max())}")
        golden = {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "model_type": cfg.model_type,
            "input_ids": input_ids.tolist(),
            "logits_file": "logits.f32",
            "logits_shape": [BATCH, SEQ, VOCAB],
            "nll": nll,
            "notes": fx.notes,
            "seed": seed,
            "logits_std": std,
        }
        raw = logits.contiguous().numpy().astype("<f4").tobytes()
        (tmp / "logits.f32").write_bytes(raw)
        (tmp / "golden.json").write_text(golden_text(golden))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        OUT_ROOT.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp, out_dir)
        for f in out_dir.iterdir():
            f.chmod(0o644)

    results = [dict(name=fx.name, model_type=cfg.model_type, std=std, nll=nll)]

    for twin_name, rewrite, twin_notes in fx.twins:
        tdir = OUT_ROOT / twin_name
        if tdir.exists():
            shutil.rmtree(tdir)
        shutil.copytree(out_dir, tdir)
        cfg_dict = json.loads((out_dir / "config.json").read_text())
        new_cfg = rewrite(cfg_dict)
        (tdir / "config.json").write_text(json.dumps(new_cfg, indent=2, sort_keys=True) + "\n")
        tg = dict(golden)
        tg["notes"] = twin_notes
        (tdir / "golden.json").write_text(golden_text(tg))
        tw_logits = forward_logits(load_eager(tdir), input_ids)
        if not torch.equal(tw_logits, logits):
            raise RuntimeError(
                f"{twin_name}: rewritten config changes logits, max |d| {float((tw_logits - logits).abs().max())}")
        results.append(dict(name=twin_name, model_type=cfg.model_type, std=std, nll=nll, twin_of=fx.name))
    return results


def neutralise(p: torch.nn.Parameter, kind: str) -> torch.Tensor:
    if kind == "norm":
        return torch.ones_like(p)
    return torch.zeros_like(p)  # matrices, embeddings, biases, (1+w) norm weights


def check_fixture(fx: Fixture, names: list[str]) -> list[str]:
    """Reload the written folder(s): golden reproduces, every parameter and every ablation moves the logits."""
    lines = []
    folder = OUT_ROOT / fx.name
    golden = json.loads((folder / "golden.json").read_text())
    ids = torch.tensor(golden["input_ids"], dtype=torch.int64)
    ref = torch.from_numpy(np.fromfile(folder / "logits.f32", dtype="<f4").reshape(golden["logits_shape"]))
    for name in names:
        got = forward_logits(load_eager(OUT_ROOT / name), ids)
        assert torch.equal(got, ref), f"{name}: logits differ from logits.f32"
    model = load_eager(folder)
    kinds = {}
    owner = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owner.setdefault(id(p), (mod, pname))
    worst = (math.inf, "")
    with torch.no_grad():
        for full, p in model.named_parameters():
            mod, pname = owner[id(p)]
            cls = type(mod).__name__
            kind = ("bias" if pname == "bias" else "norm(1+w)" if cls in OFFSET_NORMS
                    else "norm" if "Norm" in cls else "other")
            kinds[kind] = kinds.get(kind, 0) + 1
            saved = p.detach().clone()
            p.copy_(neutralise(p, kind))
            d = float((forward_logits(model, ids) - ref).abs().max())
            p.copy_(saved)
            inv = INVARIANT.get(model.config.model_type)
            if inv and full.endswith(inv):
                assert d < 1e-4, f"{full} expected softmax-invariant, moved logits by {d}"
                kinds["invariant"] = kinds.get("invariant", 0) + 1
                continue
            worst = min(worst, (d, full))
    assert worst[0] > 1e-2, f"{fx.name}: neutralising {worst[1]} barely moves the logits ({worst[0]:.2e})"
    inv = f" ({kinds['invariant']} softmax-invariant k biases skipped)" if "invariant" in kinds else ""
    lines.append(f"{fx.name}: {sum(kinds.values())} params, each zeroed/neutralised in turn; weakest "
                 f"{worst[1]} max|d| {worst[0]:.3f}{inv}")
    for label, over in fx.ablations:
        cfg = transformers.AutoConfig.from_pretrained(str(folder))
        for k, v in over.items():
            setattr(cfg, k, copy.deepcopy(v))
        if "rope_parameters" in over:
            cfg.standardize_rope_params()
        m = AutoModelForCausalLM.from_pretrained(str(folder), config=cfg, attn_implementation="eager",
                                                 dtype=torch.float32).eval()
        d = float((forward_logits(m, ids) - ref).abs().max())
        assert d > 1e-2, f"{fx.name}: ablation {label!r} barely moves the logits ({d:.2e})"
        lines.append(f"    {label}: max|d| {d:.3f}")
    return lines


def shape_of(folder: Path) -> dict:
    """Key sizes in one vocabulary whatever the family calls them."""
    c = transformers.AutoConfig.from_pretrained(str(folder))
    heads = c.num_attention_heads
    if c.model_type == "falcon":
        kv = c.num_kv_heads if c.new_decoder_architecture else (1 if c.multi_query else heads)
    else:
        kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    ffn = (getattr(c, "intermediate_size", None) or getattr(c, "ffn_dim", None) or getattr(c, "n_inner", None)
           or getattr(c, "ffn_hidden_size", None) or 4 * c.hidden_size)
    return dict(hidden=c.hidden_size, layers=c.num_hidden_layers, heads=heads, kv=kv, head_dim=head_dim, ffn=ffn,
                tied=bool(getattr(c, "tie_word_embeddings", False)))


README_HEAD = """# Family fixtures

Tiny random checkpoints of each model family with Hugging Face transformers' own logits, for
`test/families.test.ts`. Made by `scripts/families/make_fixtures.py` (this file too); do not edit by hand.

```sh
python3 -m venv /tmp/venv-fixtures
/tmp/venv-fixtures/bin/pip install torch=={torch_pip} transformers=={tf} safetensors numpy
/tmp/venv-fixtures/bin/python scripts/families/make_fixtures.py            # all; --only NAME... for some
/tmp/venv-fixtures/bin/python scripts/families/make_fixtures.py --check    # every weight/feature moves the logits
python3 scripts/families/numpy_reference.py   # independent float64 numpy forward (needs numpy only)
```

`numpy_reference.py` re-implements every family from config.json + model.safetensors alone and matches
`logits.f32` within 3e-5 for every fixture: a readable spec of what each family computes.

Made with transformers {tf}, torch {torch} (CPU), safetensors {st}, numpy {np}. The script runs the repo's
prettier over what it writes (JSON content is exactly what transformers saved; only whitespace differs).

Each folder: `config.json` and `generation_config.json` from `save_pretrained`; `model.safetensors` (F32, as
transformers 5 saves it: a tied `lm_head` is not stored); `golden.json` (`input_ids` 2 x 40 drawn uniformly from
[0, 256), `logits_shape` [2, 40, 256], `nll` = mean next-token NLL over the 2 x 39 predicted positions, computed in
float64 from the float32 logits, `notes`, plus `seed` and `logits_std`); `logits.f32` = raw little-endian float32
logits, row-major [batch][seq][vocab], of transformers' forward with `model.eval()`, float32,
`attn_implementation="eager"`, no attention mask, no cache.

Weights: built from config with `torch.manual_seed(seed)` (seed = crc32 of the fixture name), then EVERY parameter
is re-drawn: matrices N(0, 0.2), embeddings N(0, 0.5), biases N(0, 0.1), norm gains 1 + 0.2 N(0, 1) (Gemma's
(1 + w) norms store w = 0.2 N(0, 1)). `--check` zeroes/neutralises each parameter in turn and applies the
config ablations listed in the script; each moves the logits by more than 0.01 (OPT's separate k_proj bias is
exactly softmax-invariant and skipped). Common shape: hidden 64, 2 layers (Gemma 2/3: 3), 4 heads, 2 kv heads
where the family has GQA, ffn 128, vocab 256, max_position_embeddings 128, sliding windows 16 (< 40 tokens).

`*-legacy` folders hold the SAME weights, `input_ids` and logits as the folder they name, with config.json
rewritten to the pre-transformers-5 / hub layout (`rope_theta` + `rope_scaling`, `rotary_pct`, ...); the script
checks that transformers loads each to bit-identical logits.

## Fixtures

Each line: name (model_type; hidden/layers/heads/kv heads/head_dim/ffn; tied or untied lm_head; std of the
golden logits): what it exercises.

"""


def write_readme() -> Path:
    import safetensors

    rows = []
    notes_of = {}
    for fx in FIXTURES:
        notes_of[fx.name] = fx.notes
        for tn, _, tnotes in fx.twins:
            notes_of[tn] = tnotes
    versions = None
    for name in all_names():
        folder = OUT_ROOT / name
        if not (folder / "golden.json").exists():
            continue
        g = json.loads((folder / "golden.json").read_text())
        versions = versions or (g["transformers"], g["torch"])
        sh = shape_of(folder)
        dims = f"{sh['hidden']}/{sh['layers']}/{sh['heads']}/{sh['kv']}/{sh['head_dim']}/{sh['ffn']}"
        note = notes_of[name]
        rows.append(f"- `{name}` ({g['model_type']}; {dims}; {'tied' if sh['tied'] else 'untied'}; "
                    f"std {g['logits_std']:.2f}): {note}")
    tf, tv = versions or (transformers.__version__, torch.__version__)
    text = README_HEAD.format(tf=tf, torch=tv, torch_pip=tv.split("+")[0], st=safetensors.__version__,
                              np=np.__version__)
    path = OUT_ROOT / "README.md"
    path.write_text(text + "\n".join(rows) + "\n")
    return path


def run_prettier(paths: list[Path]) -> None:
    """`npm run lint` runs `prettier --check .`, so format what we wrote the way the repo does."""
    exe = REPO / "node_modules" / ".bin" / "prettier"
    if not exe.exists():
        print("WARNING: node_modules/.bin/prettier missing (npm ci); run `npx prettier --write "
              "test/fixtures/families` before committing")
        return
    subprocess.run([str(exe), "--log-level", "warn", "--write", *map(str, paths)], cwd=REPO, check=True)


def all_names() -> list[str]:
    names = []
    for fx in FIXTURES:
        names.append(fx.name)
        names.extend(t[0] for t in fx.twins)
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="NAME", help="build only these fixtures (a twin builds its base)")
    ap.add_argument("--list", action="store_true", help="list fixture names and exit")
    ap.add_argument("--check", action="store_true",
                    help="do not write; reload the fixtures and show that every parameter and feature matters")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every drawn parameter")
    args = ap.parse_args(argv)

    if args.list:
        print("\n".join(all_names()))
        return 0

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    chosen = FIXTURES
    if args.only:
        known = set(all_names())
        bad = [n for n in args.only if n not in known]
        if bad:
            ap.error(f"unknown fixture(s): {', '.join(bad)}; see --list")
        chosen = [fx for fx in FIXTURES if fx.name in args.only or any(t[0] in args.only for t in fx.twins)]

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    if args.check:
        for fx in chosen:
            print("\n".join(check_fixture(fx, [fx.name] + [t[0] for t in fx.twins])))
        return 0
    written = []
    for fx in chosen:
        if fx.model_type not in CONFIG_MAPPING:
            print(f"SKIP {fx.name}: model_type {fx.model_type!r} not in this transformers")
            continue
        for r in write_fixture(fx, verbose=args.verbose):
            written.append(OUT_ROOT / r["name"])
            extra = f"  (same weights as {r['twin_of']})" if "twin_of" in r else ""
            print(f"{r['name']:<26} {r['model_type']:<12} logits std {r['std']:.3f}  nll {r['nll']:.4f}{extra}")
    readme = write_readme()
    run_prettier([*written, readme])
    return 0


if __name__ == "__main__":
    sys.exit(main())
