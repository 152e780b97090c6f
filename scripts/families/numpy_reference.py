#!/usr/bin/env python3
"""Independent float64 numpy forward for every fixture in test/fixtures/families.

Reads only each folder's config.json and model.safetensors (no transformers, no torch) and compares
with logits.f32, which transformers wrote. It is a second, readable statement of what each family
computes (and of what the fixture notes claim), and it reads both config layouts: transformers 5's
`rope_parameters` and the older `rope_theta` + `rope_scaling` / `rotary_pct` / `rope_local_base_freq`.

  python3 scripts/families/numpy_reference.py [NAME...]      # needs numpy only

Expected agreement: ~1e-5 (float32 rounding in transformers' forward).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2] / "test" / "fixtures" / "families"
TOL = 1e-3

_erf = np.vectorize(math.erf)


def silu(x):
    return x / (1 + np.exp(-x))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


ACT = {"silu": silu, "gelu_pytorch_tanh": gelu_tanh, "gelu_new": gelu_tanh, "gelu": gelu, "relu": lambda x: np.maximum(x, 0)}


def rms(x, w, eps, offset=False):
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y * ((1 + w) if offset else w)


def layer_norm(x, w, b, eps):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def rope(x, inv_freq, pos, scale=1.0):
    """x [T, H, D]: rotate the first 2*len(inv_freq) dims, halves convention (rotate_half); rest passes."""
    r = 2 * len(inv_freq)
    f = np.outer(pos, inv_freq)
    cos = np.cos(np.concatenate([f, f], -1))[:, None, :] * scale
    sin = np.sin(np.concatenate([f, f], -1))[:, None, :] * scale
    xr, xp = x[..., :r], x[..., r:]
    rot = np.concatenate([-xr[..., r // 2 :], xr[..., : r // 2]], -1)
    return np.concatenate([xr * cos + rot * sin, xp], -1)


def attend(q, k, v, scale, window=None, softcap=None, bias=None):
    """q [T,H,D], k/v [T,KV,D]; query head h uses kv head h // (H/KV). Causal; window W keeps q-W < k <= q."""
    T, H, _ = q.shape
    rep = H // k.shape[1]
    k, v = np.repeat(k, rep, 1), np.repeat(v, rep, 1)
    s = np.einsum("qhd,khd->hqk", q, k) * scale
    if softcap:
        s = np.tanh(s / softcap) * softcap
    if bias is not None:
        s = s + bias
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    keep = j <= i
    if window:
        keep &= j > i - window
    s = np.where(keep[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v).reshape(T, -1)


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The format: u64 little-endian header length, JSON header {name: {dtype, shape, data_offsets}}, data."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype="<f4").reshape(info["shape"])
    return out


class Weights:
    def __init__(self, path):
        self.t = {k: v.astype(np.float64) for k, v in load_safetensors(path).items()}

    def __getitem__(self, k):
        return self.t[k]

    def __contains__(self, k):
        return k in self.t

    def lin(self, x, name):
        y = x @ self.t[name + ".weight"].T
        return y + self.t[name + ".bias"] if name + ".bias" in self.t else y


# ----------------------------------------------------------------------------- RoPE from config


def rope_params(c: dict, layer_type: str | None = None) -> dict:
    """One flat dict {rope_type, rope_theta, partial_rotary_factor, ...} whatever the config layout."""
    if "rope_parameters" in c and c["rope_parameters"]:
        rp = dict(c["rope_parameters"])
        if layer_type and layer_type in rp:
            rp = dict(rp[layer_type])
    else:  # legacy
        rs = c.get("rope_scaling") or {}
        if layer_type == "sliding_attention" and "rope_local_base_freq" in c:
            rp = {"rope_type": "default", "rope_theta": c["rope_local_base_freq"]}
        else:
            rp = dict(rs)
            rp["rope_type"] = rs.get("rope_type", rs.get("type", "default"))
            rp.pop("type", None)
            rp["rope_theta"] = c.get("rope_theta", c.get("rotary_emb_base", 10000.0))
        if "rotary_pct" in c:
            rp["partial_rotary_factor"] = c["rotary_pct"]
        elif "partial_rotary_factor" in c:
            rp["partial_rotary_factor"] = c["partial_rotary_factor"]
    if rp["rope_type"] in ("su", "yarn") and c["model_type"] == "phi3":
        rp["rope_type"] = "longrope"
    if rp["rope_type"] in ("llama3", "yarn", "longrope"):
        rp.setdefault("original_max_position_embeddings",
                      c.get("original_max_position_embeddings", c["max_position_embeddings"]))
    if c["model_type"] == "phi3" and "original_max_position_embeddings" in c:
        rp["original_max_position_embeddings"] = c["original_max_position_embeddings"]
    return rp


def inv_freq(c: dict, head_dim: int, seq_len: int, layer_type: str | None = None):
    """(inv_freq, cos/sin scale) for a forward over seq_len tokens."""
    rp = rope_params(c, layer_type)
    theta = rp["rope_theta"]
    dim = int(head_dim * rp.get("partial_rotary_factor", 1.0))
    exps = np.arange(0, dim, 2) / dim
    base = 1.0 / theta**exps
    t = rp["rope_type"]
    max_pos = c["max_position_embeddings"]
    if t == "default":
        return base, 1.0
    if t == "linear":
        return base / rp["factor"], 1.0
    if t == "dynamic":  # recomputed from the whole forward's length once it exceeds max_position_embeddings
        f = rp["factor"]
        L = max(seq_len, max_pos)
        theta2 = theta * (f * L / max_pos - (f - 1)) ** (dim / (dim - 2))
        return 1.0 / theta2**exps, 1.0
    if t == "llama3":
        f, lo, hi, old = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
        wl = 2 * math.pi / base
        smooth = (old / wl - lo) / (hi - lo)
        out = np.where(wl > old / lo, base / f, base)
        mid = (wl >= old / hi) & (wl <= old / lo)
        return np.where(mid, (1 - smooth) * base / f + smooth * base, out), 1.0
    if t == "yarn":
        f, old = rp["factor"], rp["original_max_position_embeddings"]
        bf, bs = rp.get("beta_fast") or 32, rp.get("beta_slow") or 1
        att = rp.get("attention_factor") or (0.1 * math.log(f) + 1.0 if f > 1 else 1.0)

        def corr(rot):
            return dim * math.log(old / (rot * 2 * math.pi)) / (2 * math.log(theta))

        low, high = max(math.floor(corr(bf)), 0), min(math.ceil(corr(bs)), dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
        extra = 1 - ramp  # 1 = keep the original frequency
        return base / f * (1 - extra) + base * extra, att
    if t == "longrope":
        old = rp["original_max_position_embeddings"]
        f = rp.get("factor") or max_pos / old
        att = rp.get("attention_factor") or (1.0 if f <= 1 else math.sqrt(1 + math.log(f) / math.log(old)))
        ext = np.array(rp["long_factor"] if seq_len > old else rp["short_factor"])
        return base / ext, att
    raise ValueError(t)


# ----------------------------------------------------------------------------- families


def llama_family(c, W, ids):
    """llama, mistral, qwen2, qwen3, phi3, gemma, gemma2, gemma3_text, olmo2, granite."""
    mt = c["model_type"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    D = c.get("head_dim") or c["hidden_size"] // H
    eps = c["rms_norm_eps"]
    gemma = mt.startswith("gemma")
    act = ACT[c.get("hidden_activation") or c.get("hidden_act") or "silu"]
    n = c["num_hidden_layers"]
    if "layer_types" in c:
        types = c["layer_types"]
    elif mt == "gemma2":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    elif mt == "gemma3_text":
        per = c["sliding_window_pattern"]
        types = ["sliding_attention" if (i + 1) % per else "full_attention" for i in range(n)]
    else:
        types = ["sliding_attention" if c.get("sliding_window") else "full_attention"] * n
    scale = c.get("query_pre_attn_scalar", D) ** -0.5
    if mt == "granite":
        scale = c["attention_multiplier"]
    resid = c.get("residual_multiplier", 1.0)
    out = []
    for row in ids:
        T = len(row)
        pos = np.arange(T)
        x = W["model.embed_tokens.weight"][row]
        if gemma:
            x = x * math.sqrt(c["hidden_size"])
        x = x * c.get("embedding_multiplier", 1.0)
        for li in range(n):
            p = f"model.layers.{li}."
            lt = types[li]
            h = x if mt == "olmo2" else rms(x, W[p + "input_layernorm.weight"], eps, gemma)
            if mt == "phi3":
                qkv = W.lin(h, p + "self_attn.qkv_proj")
                q, k, v = np.split(qkv, [H * D, H * D + KV * D], -1)
            else:
                q, k, v = (W.lin(h, p + f"self_attn.{m}_proj") for m in "qkv")
            if mt == "olmo2":  # norm over the whole projection
                q, k = rms(q, W[p + "self_attn.q_norm.weight"], eps), rms(k, W[p + "self_attn.k_norm.weight"], eps)
            q, k, v = q.reshape(T, H, D), k.reshape(T, KV, D), v.reshape(T, KV, D)
            if mt in ("qwen3", "gemma3_text"):  # per-head norm
                q = rms(q, W[p + "self_attn.q_norm.weight"], eps, gemma)
                k = rms(k, W[p + "self_attn.k_norm.weight"], eps, gemma)
            inv, att = inv_freq(c, D, T, lt if mt == "gemma3_text" else None)
            q, k = rope(q, inv, pos, att), rope(k, inv, pos, att)
            window = c.get("sliding_window") if lt == "sliding_attention" else None
            a = W.lin(attend(q, k, v, scale, window, c.get("attn_logit_softcapping")), p + "self_attn.o_proj")
            sandwich = p + "pre_feedforward_layernorm.weight" in W
            if sandwich or mt == "olmo2":
                a = rms(a, W[p + "post_attention_layernorm.weight"], eps, gemma)
            x = x + resid * a
            if sandwich:
                h = rms(x, W[p + "pre_feedforward_layernorm.weight"], eps, gemma)
            elif mt == "olmo2":
                h = x
            else:
                h = rms(x, W[p + "post_attention_layernorm.weight"], eps, gemma)
            if mt == "phi3":
                gate, up = np.split(W.lin(h, p + "mlp.gate_up_proj"), 2, -1)
            else:
                gate, up = W.lin(h, p + "mlp.gate_proj"), W.lin(h, p + "mlp.up_proj")
            m = W.lin(act(gate) * up, p + "mlp.down_proj")
            if sandwich or mt == "olmo2":
                m = rms(m, W[p + "post_feedforward_layernorm.weight"], eps, gemma)
            x = x + resid * m
        x = rms(x, W["model.norm.weight"], eps, gemma)
        lm = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
        logits = x @ lm.T / c.get("logits_scaling", 1.0)
        if c.get("final_logit_softcapping"):
            cap = c["final_logit_softcapping"]
            logits = np.tanh(logits / cap) * cap
        out.append(logits)
    return np.stack(out)


def gpt_neox(c, W, ids):
    H = c["num_attention_heads"]
    D = c["hidden_size"] // H
    eps = c["layer_norm_eps"]
    out = []
    for row in ids:
        T = len(row)
        inv, _ = inv_freq(c, D, T)
        x = W["gpt_neox.embed_in.weight"][row]
        for li in range(c["num_hidden_layers"]):
            p = f"gpt_neox.layers.{li}."
            h = layer_norm(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"], eps)
            qkv = W.lin(h, p + "attention.query_key_value").reshape(T, H, 3, D)  # per head: q, k, v
            q, k = rope(qkv[:, :, 0], inv, np.arange(T)), rope(qkv[:, :, 1], inv, np.arange(T))
            a = W.lin(attend(q, k, qkv[:, :, 2], D**-0.5), p + "attention.dense")
            src = x if c["use_parallel_residual"] else x + a
            h2 = layer_norm(src, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"], eps)
            m = W.lin(ACT[c["hidden_act"]](W.lin(h2, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
            x = x + a + m
        x = layer_norm(x, W["gpt_neox.final_layer_norm.weight"], W["gpt_neox.final_layer_norm.bias"], eps)
        out.append(x @ W["embed_out.weight"].T)
    return np.stack(out)


def falcon(c, W, ids):
    H = c["num_attention_heads"]
    D = c["hidden_size"] // H
    eps = c["layer_norm_epsilon"]
    new = c["new_decoder_architecture"]
    KV = c["num_kv_heads"] if new else (1 if c["multi_query"] else H)
    out = []
    for row in ids:
        T = len(row)
        inv, _ = inv_freq(c, D, T)
        pos = np.arange(T)
        x = W["transformer.word_embeddings.weight"][row]
        for li in range(c["num_hidden_layers"]):
            p = f"transformer.h.{li}."
            if new:
                ha = layer_norm(x, W[p + "ln_attn.weight"], W[p + "ln_attn.bias"], eps)
                hm = layer_norm(x, W[p + "ln_mlp.weight"], W[p + "ln_mlp.bias"], eps)
                # grouped per kv head: [H/KV queries, k, v] x head_dim
                qkv = W.lin(ha, p + "self_attention.query_key_value").reshape(T, KV, H // KV + 2, D)
                q, k, v = qkv[:, :, :-2].reshape(T, H, D), qkv[:, :, -2], qkv[:, :, -1]
            else:
                ha = hm = layer_norm(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"], eps)
                qkv = W.lin(ha, p + "self_attention.query_key_value").reshape(T, H + 2, D)
                q, k, v = qkv[:, :H], qkv[:, H : H + 1], qkv[:, H + 1 :]
            a = W.lin(attend(rope(q, inv, pos), rope(k, inv, pos), v, D**-0.5), p + "self_attention.dense")
            m = W.lin(gelu(W.lin(hm, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
            x = x + a + m
        x = layer_norm(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], eps)
        out.append(x @ W["transformer.word_embeddings.weight"].T)
    return np.stack(out)


def bloom(c, W, ids):
    H = c["n_head"]
    D = c["hidden_size"] // H
    eps = c["layer_norm_epsilon"]
    slopes = np.array([2 ** (-8 * (i + 1) / H) for i in range(H)])  # H a power of two
    out = []
    for row in ids:
        T = len(row)
        alibi = slopes[:, None, None] * np.arange(T)[None, None, :]  # slope*key_pos == slope*(k-q) up to softmax
        x = W["transformer.word_embeddings.weight"][row]
        x = layer_norm(x, W["transformer.word_embeddings_layernorm.weight"],
                       W["transformer.word_embeddings_layernorm.bias"], eps)
        for li in range(c["n_layer"]):
            p = f"transformer.h.{li}."
            h = layer_norm(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"], eps)
            qkv = W.lin(h, p + "self_attention.query_key_value").reshape(T, H, 3, D)
            a = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], D**-0.5, bias=alibi)
            x = x + W.lin(a, p + "self_attention.dense")
            h = layer_norm(x, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"], eps)
            x = x + W.lin(gelu_tanh(W.lin(h, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
        x = layer_norm(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], eps)
        out.append(x @ W["transformer.word_embeddings.weight"].T)
    return np.stack(out)


def opt(c, W, ids):
    H = c["num_attention_heads"]
    D = c["hidden_size"] // H
    pre = c["do_layer_norm_before"]
    eps = 1e-5
    P = "model.decoder."
    out = []
    for row in ids:
        T = len(row)
        x = W[P + "embed_tokens.weight"][row]
        if P + "project_in.weight" in W:
            x = x @ W[P + "project_in.weight"].T
        x = x + W[P + "embed_positions.weight"][np.arange(T) + 2]  # offset 2
        for li in range(c["num_hidden_layers"]):
            p = P + f"layers.{li}."

            def ln_a(t):
                return layer_norm(t, W[p + "self_attn_layer_norm.weight"], W[p + "self_attn_layer_norm.bias"], eps)

            def ln_f(t):
                return layer_norm(t, W[p + "final_layer_norm.weight"], W[p + "final_layer_norm.bias"], eps)

            h = ln_a(x) if pre else x
            q, k, v = (W.lin(h, p + f"self_attn.{m}_proj").reshape(T, H, D) for m in "qkv")
            x = x + W.lin(attend(q, k, v, D**-0.5), p + "self_attn.out_proj")
            if not pre:
                x = ln_a(x)
            h = ln_f(x) if pre else x
            x = x + W.lin(np.maximum(W.lin(h, p + "fc1"), 0), p + "fc2")
            if not pre:
                x = ln_f(x)
        if pre:
            x = layer_norm(x, W[P + "final_layer_norm.weight"], W[P + "final_layer_norm.bias"], eps)
        if P + "project_out.weight" in W:
            x = x @ W[P + "project_out.weight"].T
        out.append(x @ W[P + "embed_tokens.weight"].T)
    return np.stack(out)


def gpt2(c, W, ids):
    H = c["n_head"]
    D = c["n_embd"] // H
    eps = c["layer_norm_epsilon"]

    def conv(x, n):  # Conv1D: weight stored [in, out]
        return x @ W[n + ".weight"] + W[n + ".bias"]

    out = []
    for row in ids:
        T = len(row)
        x = W["transformer.wte.weight"][row] + W["transformer.wpe.weight"][:T]
        for li in range(c["n_layer"]):
            p = f"transformer.h.{li}."
            h = layer_norm(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
            q, k, v = (t.reshape(T, H, D) for t in np.split(conv(h, p + "attn.c_attn"), 3, -1))
            x = x + conv(attend(q, k, v, D**-0.5), p + "attn.c_proj")
            h = layer_norm(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
            x = x + conv(gelu_tanh(conv(h, p + "mlp.c_fc")), p + "mlp.c_proj")
        x = layer_norm(x, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], eps)
        out.append(x @ W["transformer.wte.weight"].T)
    return np.stack(out)


FAMILY = {"gpt_neox": gpt_neox, "falcon": falcon, "bloom": bloom, "opt": opt, "gpt2": gpt2}


def check(name: str) -> float:
    d = ROOT / name
    c = json.loads((d / "config.json").read_text())
    g = json.loads((d / "golden.json").read_text())
    want = np.fromfile(d / "logits.f32", dtype="<f4").reshape(g["logits_shape"])
    got = FAMILY.get(c["model_type"], llama_family)(c, Weights(d / "model.safetensors"), np.array(g["input_ids"]))
    return float(np.abs(got - want).max())


def main(argv: list[str]) -> int:
    names = argv or sorted(p.name for p in ROOT.iterdir() if (p / "golden.json").exists())
    bad = 0
    for name in names:
        err = check(name)
        ok = err < TOL
        bad += not ok
        print(f"{name:<26} max |numpy - transformers| {err:.2e}{'' if ok else '  FAIL'}")
    print(f"{len(names) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
