"""
model.py: a DeepSeek-V3-style transformer in one file, that also loads real Hugging Face checkpoints.

What is here, top to bottom: the config dataclass and named presets (tiny test models, the zero-* models
trained from scratch, and the real shapes of DeepSeek-V3/V2-Lite, Moonlight, Qwen2.5, Llama-3.2), a
parameter count computed from the config alone, RMSNorm, RoPE (interleaved or half-split pairs) with YaRN
and Llama-3 frequency scaling, Multi-head Latent Attention (MLA, textbook and weight-absorbed paths),
grouped-query attention (GQA, for Qwen/Llama-shaped dense models), the SwiGLU MLP, DeepSeekMoE (shared +
routed experts, sigmoid or softmax routing, group-limited top-k, auxiliary-loss-free bias balancing and the
sequence-wise balance loss), the KV cache, and Hugging Face checkpoint loading and saving (safetensors).

Simplifications relative to the paper / production systems:
1. No multi-token prediction (MTP) module; no tensor/expert parallelism (FSDP lives in distributed.py).
2. Attention: GQA and MLA's textbook path call torch's scaled_dot_product_attention with a boolean
   mask; MLA's absorbed path writes its own scores and softmax in latent space (einsums). No paged
   or FlashMLA kernels.
3. The KV cache is one preallocated tensor pair per layer with a single shared length for the batch
   (ragged prompts are left-padded and masked with `valid`), not a paged cache. Its static mode keeps every
   shape fixed (device-side slot, attention over all slots) so a decode step can be a CUDA graph.
4. FP8 checkpoints are dequantised to the model dtype when loaded; there is no FP8 compute.
5. Expert load for the bias update is counted only in forwards run with grad enabled (training
   forwards), so sampling does not move the router bias, and only on the tokens of load_mask (the
   response tokens, not prompt padding); the sequence-wise aux loss ignores padding.
6. YaRN/Llama-3 scaling use static inverse frequencies (no dynamic NTK).

Use:
    cfg = ModelConfig.from_preset("tiny-moe"); model = Transformer(cfg)
    logits = model(tokens)                                   # tokens (B, T) -> (B, T, V) float32
    cache = model.make_cache(B, max_len); logits = model(prompt, cache=cache)   # then one token at a time
    model = Transformer.from_pretrained("path/to/hf_dir")    # qwen2 / llama / deepseek_v3 / deepseek_v2
    print(count_params(ModelConfig.from_preset("deepseek-v3"), active=True))

Shape letters: B batch rows, T time (new tokens), S cache slots (keys), H heads, D head dim (MLA: Dn without
RoPE, Dr with RoPE, Dv values), C model dim, V vocab, E routed experts, K active experts per token, EG expert
groups, N flattened tokens (B*T), R kv latent rank, I expert width.
"""
import json
import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------
# Config and presets


@dataclass
class ModelConfig:
    vocab_size: int = 512
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    max_seq_len: int = 512
    attn: str = "mla"  # "mla" | "gqa"
    # MLA
    # "lora" = low rank (as in LoRA): a projection factored through a narrow bottleneck
    q_lora_rank: int = 0  # query bottleneck: x -> wq_a (C -> q_lora_rank) -> wq_b; 0 -> plain wq
    kv_lora_rank: int = 32  # R: the compressed latent c_kv, the only per-token K/V state cached
    # "nope" = no position embedding: the part of each query/key head that RoPE does not rotate
    qk_nope_head_dim: int = 16  # Dn: per-head query/key dims without RoPE, expanded from c_kv
    qk_rope_head_dim: int = 8  # Dr: per-head query/key dims with RoPE (the key part k_pe is shared by heads)
    v_head_dim: int = 16  # Dv: per-head value dims
    # GQA
    n_kv_heads: int = 4
    head_dim: int = 16
    qkv_bias: bool = False
    # FFN
    inter_dim: int = 256  # dense SwiGLU width
    n_routed_experts: int = 0  # 0 -> every layer dense
    n_dense_layers: int = 1
    n_shared_experts: int = 1
    n_activated_experts: int = 2
    moe_inter_dim: int = 64
    score_func: str = "sigmoid"  # "sigmoid" (V3) | "softmax" (V2)
    norm_topk_prob: bool = True
    route_scale: float = 1.0
    n_expert_groups: int = 1
    n_limited_groups: int = 1
    bias_update_speed: float = 1e-3
    aux_loss_alpha: float = 0.0
    # RoPE
    rope_theta: float = 10000.0
    rope_interleave: bool = True  # True: rotate pairs (2i, 2i+1) (DeepSeek); False: (i, i+D/2) (Qwen/Llama)
    rope_scaling: dict | None = None  # {"type": "yarn", "factor", "original_max_position_embeddings", ...}
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    mla_absorb: bool = False  # the one switch: textbook (expand K/V) vs absorbed path
    moe_impl: str = "fast"  # "loop" (reference) | "fast"

    def __post_init__(self):
        self.q_lora_rank = self.q_lora_rank or 0
        choices = {"attn": ("mla", "gqa"), "score_func": ("sigmoid", "softmax"), "moe_impl": ("loop", "fast")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; valid: {valid}")
        positive = ["vocab_size", "dim", "n_layers", "n_heads", "max_seq_len", "inter_dim", "norm_eps"]
        positive += ["kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"] if self.attn == "mla" \
            else ["n_kv_heads", "head_dim"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be > 0")
        rope_dim = self.qk_rope_head_dim if self.attn == "mla" else self.head_dim
        if rope_dim % 2:
            raise ValueError(f"rope head dim {rope_dim} must be even")
        if self.attn == "gqa" and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.n_routed_experts:
            E, EG = self.n_routed_experts, self.n_expert_groups
            if not 0 <= self.n_dense_layers <= self.n_layers:
                raise ValueError(f"n_dense_layers={self.n_dense_layers} must be in [0, n_layers={self.n_layers}]")
            if EG < 1 or E % EG:
                raise ValueError(f"n_expert_groups={EG} must divide n_routed_experts={E}")
            if self.score_func == "sigmoid" and EG > 1 and E // EG < 2:
                raise ValueError(f"sigmoid group routing needs >= 2 experts per group, got {E}/{EG}")
            if not 1 <= self.n_limited_groups <= EG:
                raise ValueError(f"n_limited_groups={self.n_limited_groups} must be in [1, n_expert_groups={EG}]")
            if not 1 <= self.n_activated_experts <= self.n_limited_groups * E // EG:
                raise ValueError(f"n_activated_experts={self.n_activated_experts} must be in "
                                 f"[1, {self.n_limited_groups * E // EG}] (experts in the limited groups)")
            if self.moe_inter_dim <= 0 or self.n_shared_experts < 0:
                raise ValueError("moe_inter_dim must be > 0 and n_shared_experts >= 0")
            if self.bias_update_speed < 0 or self.aux_loss_alpha < 0 or self.route_scale <= 0:
                raise ValueError("bias_update_speed and aux_loss_alpha must be >= 0, route_scale > 0")
        if self.rope_scaling is not None and self.rope_scaling.get("type") not in ("yarn", "llama3"):
            raise ValueError(f"rope_scaling type {self.rope_scaling.get('type')!r}; valid: 'yarn', 'llama3' or None")

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
        valid = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(f"unknown ModelConfig fields {bad}; valid: {sorted(valid)}")
        return cls(**{**PRESETS[name], **overrides})

    def is_moe_layer(self, i):
        return self.n_routed_experts > 0 and i >= self.n_dense_layers


_YARN_V3 = dict(type="yarn", factor=40.0, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                mscale=1.0, mscale_all_dim=1.0)
_QWEN = dict(attn="gqa", qkv_bias=True, rope_interleave=False, rope_theta=1e6, max_seq_len=32768, tie_embeddings=True)
PRESETS = {
    # tiny shapes for tests (CPU, milliseconds)
    "tiny-mla": dict(dim=64, n_layers=2, n_heads=4, inter_dim=128),
    "tiny-gqa": dict(attn="gqa", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, qkv_bias=True,
                     rope_interleave=False, inter_dim=128),
    "tiny-moe": dict(dim=64, n_layers=3, n_heads=4, q_lora_rank=32, inter_dim=128, n_routed_experts=8,
                     n_activated_experts=2, moe_inter_dim=32, n_expert_groups=4, n_limited_groups=2,
                     route_scale=2.0),
    # from-scratch R1-Zero models (vocab_size from the tokenizer: pass vocab_size=tok.vocab_size)
    "zero-tiny": dict(dim=128, n_layers=4, n_heads=4, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                      v_head_dim=32, inter_dim=384, n_routed_experts=8, n_activated_experts=2,
                      n_shared_experts=1, moe_inter_dim=96, n_dense_layers=1, max_seq_len=512),
    "zero-small": dict(dim=384, n_layers=8, n_heads=6, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32,
                       v_head_dim=64, inter_dim=1024, n_routed_experts=8, n_activated_experts=2,
                       n_shared_experts=1, moe_inter_dim=256, n_dense_layers=1, max_seq_len=1024),
    # real shapes (parameter counts: count_params; weights: Transformer.from_pretrained)
    "deepseek-v3": dict(vocab_size=129280, dim=7168, n_layers=61, n_heads=128, q_lora_rank=1536, kv_lora_rank=512,
                        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, inter_dim=18432,
                        n_routed_experts=256, n_dense_layers=3, n_shared_experts=1, n_activated_experts=8,
                        moe_inter_dim=2048, route_scale=2.5, n_expert_groups=8, n_limited_groups=4,
                        max_seq_len=163840, rope_scaling=_YARN_V3, aux_loss_alpha=1e-4),
    "deepseek-v2-lite": dict(vocab_size=102400, dim=2048, n_layers=27, n_heads=16, kv_lora_rank=512,
                             qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, inter_dim=10944,
                             n_routed_experts=64, n_dense_layers=1, n_shared_experts=2, n_activated_experts=6,
                             moe_inter_dim=1408, score_func="softmax", norm_topk_prob=False, max_seq_len=163840,
                             rope_scaling={**_YARN_V3, "mscale": 0.707, "mscale_all_dim": 0.707}),
    "moonlight-16b-a3b": dict(vocab_size=163840, dim=2048, n_layers=27, n_heads=16, kv_lora_rank=512,
                              qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, inter_dim=11264,
                              n_routed_experts=64, n_dense_layers=1, n_shared_experts=2, n_activated_experts=6,
                              moe_inter_dim=1408, route_scale=2.446, rope_theta=50000.0, max_seq_len=8192),
    "qwen2.5-0.5b": dict(_QWEN, vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64,
                         inter_dim=4864),
    "qwen2.5-1.5b": dict(_QWEN, vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128,
                         inter_dim=8960),
    "qwen2.5-7b": dict(_QWEN, vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, head_dim=128,
                       inter_dim=18944, tie_embeddings=False),
    "llama-3.2-1b": dict(attn="gqa", vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                         head_dim=64, inter_dim=8192, rope_interleave=False, rope_theta=500000.0, norm_eps=1e-5,
                         tie_embeddings=True, max_seq_len=131072,
                         rope_scaling=dict(type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192)),
}


def count_params(cfg, active=False):
    """Parameter count from the config alone (no weights). active=True counts only the experts a token uses."""
    C, H = cfg.dim, cfg.n_heads
    if cfg.attn == "mla":
        Dqk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        q = C * H * Dqk if not cfg.q_lora_rank else C * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * H * Dqk
        attn = q + C * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank \
            + cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + cfg.v_head_dim) + H * cfg.v_head_dim * C
    else:
        D, Hkv = cfg.head_dim, cfg.n_kv_heads
        attn = C * H * D + 2 * C * Hkv * D + H * D * C + (H * D + 2 * Hkv * D) * cfg.qkv_bias
    dense_ffn = 3 * C * cfg.inter_dim
    n_experts = cfg.n_activated_experts if active else cfg.n_routed_experts
    moe_ffn = 3 * C * cfg.moe_inter_dim * (n_experts + cfg.n_shared_experts) + cfg.n_routed_experts * C
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
    layers = cfg.n_layers * (attn + 2 * C) + (cfg.n_layers - n_moe) * dense_ffn + n_moe * moe_ffn
    embed = cfg.vocab_size * C * (1 if cfg.tie_embeddings else 2)
    return layers + embed + C


def cache_bytes_per_token(cfg, dtype_bytes=2):
    """KV-cache bytes one token costs in one layer: MLA caches c_kv + the shared rotated k_pe; GQA caches K and V."""
    if cfg.attn == "mla":
        return (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype_bytes
    return 2 * cfg.n_kv_heads * cfg.head_dim * dtype_bytes


# ------------------------------------------------------------------------------------------------
# Building blocks: RMSNorm, RoPE, SwiGLU


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # x (..., C)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., C) fp32
        return self.weight * xf.to(x.dtype)


def yarn_mscale(factor, mscale=1.0):
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_frequencies(dim, theta, scaling=None):
    """Inverse frequencies (dim/2,) and the factor cos/sin are multiplied by (YaRN's attention factor)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (D/2,)
    if scaling is None:
        return inv_freq, 1.0
    factor, orig = scaling["factor"], scaling["original_max_position_embeddings"]
    if scaling["type"] == "llama3":  # long wavelengths slowed by `factor`, short kept, ramp between
        lo, hi = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq  # (D/2,)
        smooth = ((orig / wavelen - lo) / (hi - lo)).clamp(0, 1)  # (D/2,) 0: interpolate, 1: keep
        return (1 - smooth) * inv_freq / factor + smooth * inv_freq, 1.0
    # YaRN: dims that rotate more than beta_fast times over the original context keep their frequency,
    # dims rotating fewer than beta_slow times are interpolated by `factor`, linear ramp in between.
    def dim_at(n_rot):
        return dim * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(theta))
    low = max(math.floor(dim_at(scaling.get("beta_fast", 32))), 0)
    high = min(math.ceil(dim_at(scaling.get("beta_slow", 1))), dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)).clamp(0, 1)  # (D/2,)
    inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)  # (D/2,)
    mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    attn_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all) if mscale and mscale_all \
        else yarn_mscale(factor)
    return inv_freq, scaling.get("attention_factor") or attn_factor


def apply_rope(x, cos, sin, interleave):
    """Rotate x (B, T, H, D) by cos/sin (B, T, 1, D/2). interleave: pairs (2i, 2i+1); else (i, i+D/2).
    The output is always in half-split order; q and k get the same order so q.k is unchanged."""
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, T, H, D/2) each
    else:
        x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, D/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (B, T, H, D)


class MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim, inter_dim):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x):  # (..., C)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (..., C)


def attend(q, k, v, mask, scale):
    """q (B, T, H, Dqk), k (B, S, Hk, Dqk), v (B, S, Hk, Dv), mask (B, 1, T, S) bool (True = may
    attend) or None (plain causal) -> (B, T, H, Dv). Hk may be smaller than H (GQA)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D), (B, Hk, S, D)
    gqa = k.shape[1] != q.shape[1]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                         scale=scale, enable_gqa=gqa)  # (B, H, T, Dv)
    return out.transpose(1, 2)  # (B, T, H, Dv)


# ------------------------------------------------------------------------------------------------
# Attention: MLA and GQA


class MLA(nn.Module):
    """Multi-head Latent Attention. Keys/values come from a small latent c_kv (R dims, normed) plus one rotated
    rope key k_pe shared by all heads; only (c_kv, k_pe) is cached. Textbook path: expand c_kv into per-head
    k_nope and v with wkv_b. Absorbed path: fold W_UK into the query and W_UV into the output and attend in
    latent space (cheaper decoding: no per-head K/V are ever built)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        H, Dn, Dr, Dv, R = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        if cfg.q_lora_rank:
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.wq_b = nn.Linear(cfg.q_lora_rank, H * (Dn + Dr), bias=False)
        else:
            self.wq = nn.Linear(cfg.dim, H * (Dn + Dr), bias=False)
        self.wkv_a = nn.Linear(cfg.dim, R + Dr, bias=False)
        self.kv_norm = RMSNorm(R, cfg.norm_eps)
        self.wkv_b = nn.Linear(R, H * (Dn + Dv), bias=False)
        self.wo = nn.Linear(H * Dv, cfg.dim, bias=False)
        self.scale = (Dn + Dr) ** -0.5
        if cfg.rope_scaling and cfg.rope_scaling["type"] == "yarn" and cfg.rope_scaling.get("mscale_all_dim"):
            self.scale *= yarn_mscale(cfg.rope_scaling["factor"], cfg.rope_scaling["mscale_all_dim"]) ** 2

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        cfg = self.cfg
        B, T, _ = x.shape
        H, Dn, Dr, Dv, R = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        q = self.wq_b(self.q_norm(self.wq_a(x))) if cfg.q_lora_rank else self.wq(x)  # (B, T, H*(Dn+Dr))
        q_nope, q_pe = q.view(B, T, H, Dn + Dr).split([Dn, Dr], dim=-1)  # (B, T, H, Dn), (B, T, H, Dr)
        q_pe = apply_rope(q_pe, cos, sin, cfg.rope_interleave)  # (B, T, H, Dr)
        c_kv, k_pe = self.wkv_a(x).split([R, Dr], dim=-1)  # (B, T, R), (B, T, Dr)
        c_kv = self.kv_norm(c_kv)  # (B, T, R)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin, cfg.rope_interleave).squeeze(2)  # (B, T, Dr)
        if cache is not None:
            c_kv, k_pe = cache.update(layer, c_kv, k_pe)  # (B, S, R), (B, S, Dr)
        S = c_kv.shape[1]
        if not cfg.mla_absorb:  # textbook: expand the latent into per-head keys and values
            kv = self.wkv_b(c_kv).view(B, S, H, Dn + Dv)  # (B, S, H, Dn+Dv)
            k_nope, v = kv.split([Dn, Dv], dim=-1)  # (B, S, H, Dn), (B, S, H, Dv)
            k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(B, S, H, Dr)], dim=-1)  # (B, S, H, Dn+Dr)
            out = attend(torch.cat([q_nope, q_pe], dim=-1), k, v, mask, self.scale)  # (B, T, H, Dv)
        else:  # absorbed: q_nope.k_nope = (q_nope W_UK).c_kv and out = (P c_kv) W_UV^T, attention in latent space
            w = self.wkv_b.weight.view(H, Dn + Dv, R)  # (H, Dn+Dv, R)
            q_lat = torch.einsum("bthd,hdr->bthr", q_nope, w[:, :Dn])  # (B, T, H, R)
            scores = torch.einsum("bthr,bsr->bhts", q_lat, c_kv) \
                + torch.einsum("bthd,bsd->bhts", q_pe, k_pe)  # (B, H, T, S)
            if mask is None:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)  # (T, S) causal
            scores = (scores * self.scale).masked_fill(~mask, float("-inf"))  # (B, H, T, S)
            probs = scores.float().softmax(dim=-1).to(c_kv.dtype)  # (B, H, T, S)
            out_lat = torch.einsum("bhts,bsr->bthr", probs, c_kv)  # (B, T, H, R)
            out = torch.einsum("bthr,hvr->bthv", out_lat, w[:, Dn:])  # (B, T, H, Dv)
        return self.wo(out.reshape(B, T, H * Dv))  # (B, T, C)


class GQA(nn.Module):
    """Grouped-query attention (Llama/Qwen2): n_kv_heads K/V heads shared by groups of query heads."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, H * D, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, Hkv * D, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, Hkv * D, bias=cfg.qkv_bias)
        self.wo = nn.Linear(H * D, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache=None, layer=0):
        cfg = self.cfg
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, cfg.n_heads, cfg.head_dim)  # (B, T, H, D)
        k = self.wk(x).view(B, T, cfg.n_kv_heads, cfg.head_dim)  # (B, T, Hkv, D)
        v = self.wv(x).view(B, T, cfg.n_kv_heads, cfg.head_dim)  # (B, T, Hkv, D)
        q, k = apply_rope(q, cos, sin, cfg.rope_interleave), apply_rope(k, cos, sin, cfg.rope_interleave)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, S, Hkv, D) each
        out = attend(q, k, v, mask, cfg.head_dim ** -0.5)  # (B, T, H, D)
        return self.wo(out.reshape(B, T, -1))  # (B, T, C)


# ------------------------------------------------------------------------------------------------
# DeepSeekMoE


def expert_counts(idx, n_experts, mask=None):
    """Tokens routed to each expert: idx (N, K) -> (E,) int64 (static shape, unlike bincount: compiles cleanly).
    mask (N,) bool: count only these tokens (real response tokens, not prompt padding)."""
    flat = idx.flatten()  # (N*K,)
    ones = torch.ones_like(flat) if mask is None else mask[:, None].expand(idx.shape).flatten().long()  # (N*K,)
    return torch.zeros(n_experts, dtype=torch.long, device=idx.device).scatter_add_(0, flat, ones)


def moe_kernel(device, dtype):
    """How MoE.experts_fast runs the experts here. "grouped": one torch._grouped_mm over expert slices whose offsets
    stay on the device (bf16 on Hopper/Blackwell GPUs, where it has a native kernel; CPU inference). "dense": every
    expert on every token, keeping the chosen (E/K times the FLOPs, but no host sync: other GPUs and dtypes, whose
    _grouped_mm would copy the offsets to the host). "split": one matmul per expert slice (CPU training)."""
    if not hasattr(torch, "_grouped_mm"):
        return "dense" if device.type == "cuda" or torch.compiler.is_compiling() else "split"
    if device.type == "cuda":
        native = dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] in (9, 10)
        return "grouped" if native else "dense"
    if torch.compiler.is_compiling():  # torch.compile traces _grouped_mm for bf16 only
        return "grouped" if dtype == torch.bfloat16 else "dense"
    return "split" if torch.is_grad_enabled() else "grouped"


class MoE(nn.Module):
    """y = shared(x) + sum over the K chosen experts of g_i * FFN_i(x).
    Routing (V3): s = sigmoid(x W_g^T); choose experts by s + bias (bias only steers selection, never the
    weights), restricted to the n_limited_groups best groups (group score = sum of its top-2 biased scores);
    weights = s at the chosen experts, normalised to sum 1, times route_scale. V2: softmax scores, group
    score = max. The bias is nudged by update_bias() from the load counted in training forwards."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        E, C, I = cfg.n_routed_experts, cfg.dim, cfg.moe_inter_dim
        self.gate = nn.Linear(C, E, bias=False)
        self.register_buffer("bias", torch.zeros(E))  # e_score_correction_bias (kept in fp32)
        self.register_buffer("load", torch.zeros(E), persistent=False)  # tokens per expert since last update
        self.register_buffer("last_load", torch.zeros(E), persistent=False)  # the counts the last update used
        self.w1 = nn.Parameter(torch.empty(E, I, C))  # gate proj per expert
        self.w2 = nn.Parameter(torch.empty(E, C, I))  # down proj
        self.w3 = nn.Parameter(torch.empty(E, I, C))  # up proj
        self.shared = MLP(C, cfg.n_shared_experts * I) if cfg.n_shared_experts else None
        self.aux_loss = torch.zeros(())

    def route(self, x):
        """x (N, C) -> weights (N, K) fp32, expert ids (N, K), scores (N, E) fp32."""
        cfg = self.cfg
        E, EG, K = cfg.n_routed_experts, cfg.n_expert_groups, cfg.n_activated_experts
        with torch.autocast(x.device.type, enabled=False):  # fp32: bias steps of 1e-3 must register
            logits = F.linear(x.float(), self.gate.weight.float())  # (N, E)
        scores = logits.sigmoid() if cfg.score_func == "sigmoid" else logits.softmax(-1)  # (N, E)
        choice = scores + self.bias.float()  # (N, E) used only to pick experts
        if EG > 1:
            grouped = choice.view(-1, EG, E // EG)  # (N, EG, E/EG)
            group_score = grouped.topk(2, dim=-1)[0].sum(-1) if cfg.score_func == "sigmoid" \
                else grouped.amax(dim=-1)  # (N, EG)
            keep = group_score.topk(cfg.n_limited_groups, dim=-1)[1]  # (N, n_limited)
            group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)  # (N, EG)
            choice = choice.masked_fill(~group_mask.repeat_interleave(E // EG, dim=1), float("-inf"))  # (N, E)
        idx = choice.topk(K, dim=-1)[1]  # (N, K)
        weights = scores.gather(1, idx)  # (N, K)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)  # (N, K)
        return weights * cfg.route_scale, idx, scores

    def experts_loop(self, x, weights, idx):
        """Reference: for each expert, gather its tokens, run its SwiGLU, add back weighted. x (N, C) -> (N, C)."""
        y = torch.zeros_like(x)  # (N, C)
        w1, w2, w3 = self.w1.unbind(0), self.w2.unbind(0), self.w3.unbind(0)  # E views; one backward op each
        for e in range(self.cfg.n_routed_experts):
            tok, slot = torch.where(idx == e)  # (n,), (n,) tokens routed to e, and in which K slot
            if tok.numel() == 0:
                continue
            h = F.silu(x[tok] @ w1[e].T) * (x[tok] @ w3[e].T)  # (n, I)
            y.index_add_(0, tok, (h @ w2[e].T) * weights[tok, slot, None].to(x.dtype))  # (N, C)
        return y

    def experts_fast(self, x, weights, idx):
        """Batched, with no host sync on GPU: sort the N*K (token, expert) pairs by expert so each expert's tokens
        are one contiguous slice, run the slices (see moe_kernel), scatter-add back. x (N, C) -> (N, C)."""
        N, K = idx.shape
        dev = x.device.type
        mm_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        w1, w2, w3 = (w.to(mm_dtype) for w in (self.w1, self.w2, self.w3))  # (E, I, C), (E, C, I), (E, I, C)
        kernel = moe_kernel(x.device, mm_dtype)
        if kernel == "dense":  # fixed shapes, no sorting: all E experts on all N tokens
            xm = x.to(mm_dtype)  # (N, C)
            h = F.silu(torch.einsum("nc,eic->eni", xm, w1)) * torch.einsum("nc,eic->eni", xm, w3)  # (E, N, I)
            y_all = torch.einsum("eni,eci->enc", h, w2)  # (E, N, C)
            ys = y_all[idx, torch.arange(N, device=x.device)[:, None]]  # (N, K, C) chosen experts
            return (ys * weights[..., None].to(ys.dtype)).sum(1).to(x.dtype)  # (N, C)
        order = idx.flatten().argsort(stable=True)  # (N*K,) pair ids sorted by expert
        tok = order // K  # (N*K,) source token of each sorted pair
        xs = x[tok].to(mm_dtype)  # (N*K, C)
        counts = expert_counts(idx, self.cfg.n_routed_experts)  # (E,)
        if kernel == "grouped":  # one kernel for all experts; offsets never leave the device
            if torch.is_grad_enabled():  # the weight gradient contracts over a slice: start slices at 8-row
                E = self.cfg.n_routed_experts  # multiples (16 bytes in bf16), zero rows between (static shape)
                padded = (counts + 7) // 8 * 8  # (E,)
                first = (padded.cumsum(0) - padded)[idx.flatten()[order]]  # (N*K,) padded start of its expert
                rank = torch.arange(N * K, device=x.device) - (counts.cumsum(0) - counts)[idx.flatten()[order]]
                dest = first + rank  # (N*K,) row of each sorted pair in the padded layout
                xs = xs.new_zeros(N * K + 8 * E, xs.shape[1]).index_copy(0, dest, xs)  # (N*K + 8E, C)
                counts = padded
            offs = counts.cumsum(0).to(torch.int32)  # (E,) end of each expert's slice
            h = F.silu(torch._grouped_mm(xs, w1.transpose(1, 2), offs=offs)) \
                * torch._grouped_mm(xs, w3.transpose(1, 2), offs=offs)  # (N*K, I)
            ys = torch._grouped_mm(h, w2.transpose(1, 2), offs=offs)  # (N*K, C)
            ys = ys[dest] if torch.is_grad_enabled() else ys  # (N*K, C)
        else:  # one matmul per expert on its contiguous slice (.tolist() is a host sync: CPU only)
            outs = [(F.silu(xe @ w1[e].T) * (xe @ w3[e].T)) @ w2[e].T  # (n_e, C)
                    for e, xe in enumerate(xs.split(counts.tolist()))]
            ys = torch.cat(outs)  # (N*K, C)
        ys = ys.to(x.dtype) * weights.flatten()[order, None].to(x.dtype)  # (N*K, C)
        return torch.zeros_like(x).index_add_(0, tok, ys)  # (N, C)

    def forward(self, x, load_mask=None):  # x (B, T, C), load_mask (B, T) bool or None
        cfg = self.cfg
        B, T, C = x.shape
        xf = x.reshape(B * T, C)  # (N, C)
        weights, idx, scores = self.route(xf)  # (N, K), (N, K), (N, E)
        experts = self.experts_fast if cfg.moe_impl == "fast" else self.experts_loop
        y = experts(xf, weights, idx).view(B, T, C)  # (B, T, C)
        if torch.is_grad_enabled():  # load for the bias update: tokens load_mask marks (default all)
            mask = load_mask.reshape(B * T) if load_mask is not None else None  # (N,)
            self.load += expert_counts(idx, cfg.n_routed_experts, mask).to(self.load)  # (E,)
        if cfg.aux_loss_alpha > 0 and torch.is_grad_enabled():
            self.aux_loss = self.sequence_aux_loss(scores.view(B, T, -1), idx.view(B, T * cfg.n_activated_experts))
        if self.shared is not None:
            y = y + self.shared(x)  # (B, T, C)
        return y

    def sequence_aux_loss(self, scores, idx):
        """V3 eq. 17-20: alpha * sum_i f_i P_i per sequence, averaged. scores (B, T, E), idx (B, T*K)."""
        cfg = self.cfg
        E, K, T = cfg.n_routed_experts, cfg.n_activated_experts, scores.shape[1]
        counts = torch.zeros(scores.shape[0], E, device=scores.device).scatter_add_(
            1, idx, torch.ones_like(idx, dtype=torch.float32))  # (B, E)
        f = counts * E / (K * T)  # (B, E)
        P = (scores / scores.sum(-1, keepdim=True)).mean(1)  # (B, E)
        return cfg.aux_loss_alpha * (f * P).sum(-1).mean()

    @torch.no_grad()
    def update_bias(self):
        """Aux-loss-free balancing: b_i += gamma * sign(mean load - load_i); then reset the counts."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.load)  # every rank must apply the same update to its bias copy
        if self.load.sum() > 0:
            self.bias += self.cfg.bias_update_speed * torch.sign(self.load.mean() - self.load).to(self.bias)
            self.last_load.copy_(self.load)
        self.load.zero_()


# ------------------------------------------------------------------------------------------------
# KV cache and the transformer


class KVCache:
    """Per layer a pair of preallocated tensors: MLA (c_kv (B, S, R), k_pe (B, S, Dr)); GQA (k, v (B, S, Hkv, D)).
    valid (B, S) marks slots holding real (non-padding) tokens. length: slots filled so far (same for all rows).
    Dynamic (default): writes at slot `length` (a Python int) and attention sees slots 0 .. length-1, so shapes grow
    by one per step. Static (to_static()): the next slot is a device tensor and attention always sees all S slots
    (masked by valid), so every decode step has the same shapes and addresses: capturable in a CUDA graph."""

    def __init__(self, kv, valid):
        self.kv, self.valid, self.length = kv, valid, 0
        self.static, self.slot, self.slots = False, None, None

    def to_static(self):
        """Switch to fixed shapes (after the prefill): slot (), the next free slot, lives on the device."""
        self.static, self.slot = True, torch.full((), self.length, dtype=torch.long, device=self.valid.device)
        return self

    def update(self, layer, a, b):
        """Write a, b (B, T, ...) at slots length .. length+T-1 of `layer`; return slots 0 .. length+T-1
        (static: the slots in self.slots (T,), set by Transformer.forward; return all S slots)."""
        ca, cb = self.kv[layer]
        if self.static:
            ca.index_copy_(1, self.slots, a.to(ca.dtype)), cb.index_copy_(1, self.slots, b.to(cb.dtype))
            return ca, cb  # (B, S, ...) each
        L, T = self.length, a.shape[1]
        ca[:, L:L + T], cb[:, L:L + T] = a, b
        return ca[:, :L + T], cb[:, :L + T]  # (B, S, ...) each

    def select(self, index):
        """Reindex batch rows in place (index (B',) int64): repeat a prompt's cache n times or drop finished rows."""
        self.kv = [(a[index], b[index]) for a, b in self.kv]
        self.valid = self.valid[index]  # (B', S)
        return self


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLA(cfg) if cfg.attn == "mla" else GQA(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = MoE(cfg) if cfg.is_moe_layer(layer) else MLP(cfg.dim, cfg.inter_dim)

    def forward(self, x, cos, sin, mask, cache, layer, load_mask=None):  # x (B, T, C)
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer)  # (B, T, C)
        h = self.ffn_norm(x)  # (B, T, C)
        return x + (self.ffn(h, load_mask) if isinstance(self.ffn, MoE) else self.ffn(h))  # (B, T, C)


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        rope_dim = cfg.qk_rope_head_dim if cfg.attn == "mla" else cfg.head_dim
        inv_freq, self.rope_factor = rope_frequencies(rope_dim, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)
        self.aux_loss = torch.zeros(())
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 style: shrink the residual-branch output projections
            if name.endswith(("wo.weight", "w2.weight", "w2")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, MoE):
            for w in (m.w1, m.w2, m.w3):
                nn.init.normal_(w, std=0.02)

    def make_cache(self, batch_size, max_len, dtype=None, device=None):
        """An empty KVCache for batch_size rows of up to max_len tokens (dtype defaults to the
        autocast dtype if autocast is on, else the weights'; device to the weights')."""
        cfg, p = self.cfg, self.embed.weight
        device = device or p.device
        dtype = dtype or (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else p.dtype)
        if cfg.attn == "mla":
            shapes = [(batch_size, max_len, cfg.kv_lora_rank), (batch_size, max_len, cfg.qk_rope_head_dim)]
        else:
            shapes = [(batch_size, max_len, cfg.n_kv_heads, cfg.head_dim)] * 2
        kv = [tuple(torch.zeros(s, dtype=dtype, device=device) for s in shapes) for _ in range(cfg.n_layers)]
        return KVCache(kv, torch.zeros(batch_size, max_len, dtype=torch.bool, device=device))

    def forward(self, tokens, cache=None, pos=None, valid=None, return_hidden=False, load_mask=None):
        """tokens (B, T) -> logits (B, T, V) float32, or the final-normed hidden (B, T, C) if return_hidden.
        pos (B, T): RoPE positions (default cache.length + arange(T)). valid (B, T): False marks (left) padding
        no query may attend to. With a cache, K/V go to slots cache.length.., then cache.length += T.
        load_mask (B, T) bool: the tokens MoE layers count as expert load (default all; pass the response mask)."""
        B, T = tokens.shape
        start = cache.length if cache is not None else 0
        if cache is not None and start + T > cache.valid.shape[1]:
            raise ValueError(f"KV cache full: length {start} + {T} new tokens > max_len {cache.valid.shape[1]}")
        static = cache is not None and cache.static
        slots = torch.arange(T, device=tokens.device) + (cache.slot if static else start)  # (T,) slots written
        if pos is None:
            pos = slots.expand(B, T)  # (B, T)
        angles = pos[..., None].float() * self.inv_freq  # (B, T, D/2)
        cos = (angles.cos() * self.rope_factor).unsqueeze(2)  # (B, T, 1, D/2)
        sin = (angles.sin() * self.rope_factor).unsqueeze(2)  # (B, T, 1, D/2)
        x = self.embed(tokens)  # (B, T, C)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        mask = None  # None -> plain causal attention (the training fast path)
        if cache is not None or valid is not None:
            if valid is None:
                valid = torch.ones(B, T, dtype=torch.bool, device=tokens.device)  # (B, T)
            if static:  # device-side slot: same shapes every step; attend over all S slots
                cache.slots = slots
                valid = cache.valid.index_copy_(1, slots, valid)  # (B, S)
            elif cache is not None:
                cache.valid[:, start:start + T] = valid
                valid = cache.valid[:, :start + T]  # (B, S)
            q_slot = slots[:, None]  # (T, 1)
            k_slot = torch.arange(valid.shape[1], device=tokens.device)[None, :]  # (1, S)
            # a query sees earlier real tokens, and itself (padding rows never have an empty softmax)
            mask = ((k_slot <= q_slot) & valid[:, None, :]) | (k_slot == q_slot)  # (B, T, S)
            mask = mask.unsqueeze(1)  # (B, 1, T, S)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i, load_mask)  # (B, T, C)
        if cache is not None:
            cache.length += T
            if static:
                cache.slot.add_(T)
        self.aux_loss = torch.zeros((), device=x.device)  # sequence-wise balance loss: add to the loss
        if self.cfg.aux_loss_alpha > 0 and torch.is_grad_enabled():
            self.aux_loss = self.aux_loss + sum(l.ffn.aux_loss for l in self.layers if isinstance(l.ffn, MoE))
        h = self.norm(x)  # (B, T, C)
        return h if return_hidden else self.lm_head(h).float()  # (B, T, V)

    def update_router_bias(self):
        """Call after each optimizer step: nudge every MoE layer's selection bias toward balanced load."""
        for layer in self.layers:
            if isinstance(layer.ffn, MoE):
                layer.ffn.update_bias()

    def expert_load(self):
        """{layer index: (E,) fraction of routed tokens per expert}, counted since the last bias update, or
        the counts that update used when nothing was counted since (e.g. logging right after a step)."""
        loads = {i: l.ffn.load if l.ffn.load.sum() > 0 else l.ffn.last_load for i, l in enumerate(self.layers)
                 if isinstance(l.ffn, MoE)}
        return {i: (v / v.sum().clamp(min=1)).cpu() for i, v in loads.items()}

    def num_params(self, active=False):
        return count_params(self.cfg, active)

    # --------------------------------------------------------------------------------------------
    # Hugging Face checkpoints (config.json + safetensors)

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu", **overrides):
        """Load a Hugging Face checkpoint directory (qwen2, llama, deepseek_v3, deepseek_v2). Weights are read
        tensor by tensor from the memory-mapped shards straight into the (uninitialised) model, FP8 block-scaled
        weights are dequantised on the way. overrides: ModelConfig fields (e.g. mla_absorb=True)."""
        with open(_find(path, "config.json")) as f:
            hf = json.load(f)
        cfg = config_from_hf(hf, **overrides)  # rope_interleave may differ from the file's layout
        ckpt_interleave = config_from_hf(hf).rope_interleave
        with torch.device("meta"):  # build without allocating, then allocate once in the dtype
            model = cls(cfg)
        model = model.to(dtype).to_empty(device=device)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.embed.weight
        model.inv_freq = rope_frequencies(*_rope_args(cfg))[0].to(device)  # (D/2,) not in the file
        model.aux_loss = torch.zeros((), device=device)
        for layer in model.layers:
            if isinstance(layer.ffn, MoE):  # fp32: the tiny +-gamma bias steps would vanish in bf16
                layer.ffn.bias = torch.zeros(cfg.n_routed_experts, device=device)
                layer.ffn.load = torch.zeros(cfg.n_routed_experts, device=device)
        load_hf_weights(model, path, ckpt_interleave)
        return model.eval()

    def save_pretrained(self, path, max_shard_bytes=4 << 30):
        """Write config.json + safetensors (sharded with an index above max_shard_bytes) that transformers loads."""
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config_to_hf(self.cfg, self.embed.weight.dtype), f, indent=2)
        shards, current, size = [], {}, 0
        for hf, tensor in hf_state_dict(self).items():
            if current and size + tensor.nbytes > max_shard_bytes:
                shards, current, size = shards + [current], {}, 0
            current[hf], size = tensor, size + tensor.nbytes
        shards.append(current)
        if len(shards) == 1:
            save_file(shards[0], os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
            return
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "deepseek_v3", "deepseek_v2")


def _find(path, name):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory (expected a Hugging Face checkpoint folder)")
    if not os.path.exists(os.path.join(path, name)):
        raise FileNotFoundError(f"{name} not found in {path}; found {sorted(os.listdir(path))}")
    return os.path.join(path, name)


def _rope_args(cfg):
    return (cfg.qk_rope_head_dim if cfg.attn == "mla" else cfg.head_dim), cfg.rope_theta, cfg.rope_scaling


def config_from_hf(hf, **overrides):
    """Map a Hugging Face config.json dict to a ModelConfig, refusing features this model does not implement."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model_type {kind!r}; supported: {SUPPORTED_MODEL_TYPES}")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias") or (hf.get("attention_bias") and kind != "qwen2"):
        raise ValueError("unsupported config: need hidden_act='silu', mlp_bias=False, attention_bias=False "
                         f"(got {hf.get('hidden_act')}, {hf.get('mlp_bias')}, {hf.get('attention_bias')})")
    if hf.get("use_sliding_window"):
        raise ValueError("unsupported config: use_sliding_window=True (only full causal attention is implemented)")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if rope_type == "yarn":
        scaling = dict(type="yarn", factor=rope.get("factor") or hf["max_position_embeddings"] /
                       rope["original_max_position_embeddings"], original_max_position_embeddings=
                       rope["original_max_position_embeddings"], beta_fast=rope.get("beta_fast") or 32,
                       beta_slow=rope.get("beta_slow") or 1, mscale=rope.get("mscale"),
                       mscale_all_dim=rope.get("mscale_all_dim"), attention_factor=rope.get("attention_factor"))
    elif rope_type == "llama3":
        scaling = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings")} | {"type": "llama3"}
    elif rope_type != "default":
        raise ValueError(f"unsupported rope type {rope_type!r}; supported: default, yarn, llama3")
    c = dict(vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
             n_heads=hf["num_attention_heads"], max_seq_len=hf.get("max_position_embeddings", 4096),
             inter_dim=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
             tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
             rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)), rope_scaling=scaling)
    if kind in ("qwen2", "llama"):
        c.update(attn="gqa", n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                 head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
                 qkv_bias=kind == "qwen2", rope_interleave=False)
    else:
        greedy = kind == "deepseek_v2" and hf.get("topk_method", "greedy") == "greedy"
        c.update(attn="mla", q_lora_rank=hf.get("q_lora_rank") or 0, kv_lora_rank=hf["kv_lora_rank"],
                 qk_nope_head_dim=hf["qk_nope_head_dim"], qk_rope_head_dim=hf["qk_rope_head_dim"],
                 v_head_dim=hf["v_head_dim"], rope_interleave=hf.get("rope_interleave", True),
                 n_routed_experts=hf.get("n_routed_experts") or 0, n_dense_layers=hf.get("first_k_dense_replace", 0),
                 n_shared_experts=hf.get("n_shared_experts") or 0, n_activated_experts=hf["num_experts_per_tok"],
                 moe_inter_dim=hf["moe_intermediate_size"], route_scale=hf.get("routed_scaling_factor", 1.0),
                 n_expert_groups=1 if greedy else hf.get("n_group") or 1,
                 n_limited_groups=1 if greedy else hf.get("topk_group") or 1)
        if kind == "deepseek_v2":
            c.update(score_func="softmax", norm_topk_prob=False, rope_interleave=True)
            if hf.get("moe_layer_freq", 1) != 1:
                raise ValueError(f"unsupported moe_layer_freq={hf['moe_layer_freq']}; only 1 is supported")
        else:
            c.update(score_func="sigmoid", norm_topk_prob=hf.get("norm_topk_prob", True))
    return ModelConfig(**{**c, **overrides})


def config_to_hf(cfg, dtype=torch.float32):
    """ModelConfig -> Hugging Face config.json dict (deepseek_v3 / deepseek_v2 for MLA, qwen2 / llama for GQA)."""
    kind = ("deepseek_v3" if cfg.score_func == "sigmoid" else "deepseek_v2") if cfg.attn == "mla" \
        else ("qwen2" if cfg.qkv_bias else "llama")
    arch = {"deepseek_v3": "DeepseekV3", "deepseek_v2": "DeepseekV2", "qwen2": "Qwen2", "llama": "Llama"}[kind]
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope.update({("rope_type" if k == "type" else k): v for k, v in cfg.rope_scaling.items() if v is not None})
    hf = dict(model_type=kind, architectures=[arch + "ForCausalLM"], vocab_size=cfg.vocab_size, hidden_size=cfg.dim,
              num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, intermediate_size=cfg.inter_dim,
              max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
              tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_theta, rope_parameters=rope,
              attention_bias=False, dtype=str(dtype).removeprefix("torch."))
    if cfg.attn == "gqa":
        return hf | dict(num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim)
    moe = cfg.n_routed_experts > 0
    return hf | dict(num_key_value_heads=cfg.n_heads, q_lora_rank=cfg.q_lora_rank or None,
                     kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
                     qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
                     rope_interleave=cfg.rope_interleave, n_routed_experts=cfg.n_routed_experts if moe else 1,
                     first_k_dense_replace=cfg.n_dense_layers if moe else cfg.n_layers,
                     n_shared_experts=cfg.n_shared_experts, num_experts_per_tok=cfg.n_activated_experts if moe else 1,
                     moe_intermediate_size=cfg.moe_inter_dim, routed_scaling_factor=cfg.route_scale,
                     n_group=cfg.n_expert_groups, topk_group=cfg.n_limited_groups, norm_topk_prob=cfg.norm_topk_prob,
                     topk_method="greedy" if cfg.n_expert_groups == 1 else "group_limited_greedy")


_HF_RENAMES = [  # (regex on our state-dict name, replacement) applied in order; "{e}" = expert index
    (r"^embed\.", "model.embed_tokens."), (r"^norm\.", "model.norm."), (r"^layers\.", "model.layers."),
    (r"\.attn_norm\.", ".input_layernorm."), (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.attn\.", ".self_attn."), (r"\.ffn\.", ".mlp."), (r"\.shared\.", ".shared_experts."),
    (r"\.mlp\.bias$", ".mlp.gate.e_score_correction_bias"), (r"\.mlp\.(w[123])$", r".mlp.experts.{e}.\1.weight"),
    (r"\.wq\.", ".q_proj."), (r"\.wq_a\.", ".q_a_proj."), (r"\.q_norm\.", ".q_a_layernorm."),
    (r"\.wq_b\.", ".q_b_proj."), (r"\.wkv_a\.", ".kv_a_proj_with_mqa."), (r"\.kv_norm\.", ".kv_a_layernorm."),
    (r"\.wkv_b\.", ".kv_b_proj."), (r"\.wk\.", ".k_proj."), (r"\.wv\.", ".v_proj."), (r"\.wo\.", ".o_proj."),
    (r"\.w1\.", ".gate_proj."), (r"\.w2\.", ".down_proj."), (r"\.w3\.", ".up_proj."),
]


def hf_name(name):
    """Our state-dict name -> Hugging Face tensor name (stacked experts map to a name with '{e}')."""
    import re
    for pattern, repl in _HF_RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def _expected_hf_tensors(model):
    """{HF name: (our param/buffer, expert index or None)} for every tensor a checkpoint must provide."""
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if name == "lm_head.weight" and model.cfg.tie_embeddings:
            continue
        if name.endswith("ffn.bias") and model.cfg.score_func == "softmax":
            continue  # V2 checkpoints have no selection bias
        hf = hf_name(name)
        for e in range(t.shape[0]) if "{e}" in hf else [None]:
            out[hf.format(e=e)] = (t, e)
    return out


def _copy(target, value):
    with torch.no_grad():
        target.copy_(value)


def load_hf_weights(model, path, ckpt_interleave=None, assign=_copy):
    """Copy every tensor of the checkpoint at `path` into `model`, shard by shard. assign(target,
    full value) does the copy (checkpoint.copy_full_ keeps each FSDP rank's slice); the experts of a
    stacked parameter are collected into one full tensor first when assign is not the plain copy.
    Raises KeyError listing missing/unexpected names and ValueError naming any shape mismatch."""
    import re
    from safetensors import safe_open
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    else:
        weight_map = {k: "model.safetensors" for k in safe_open(_find(path, "model.safetensors"), "pt").keys()}
    handles = {}

    def read(name):  # one tensor from its (memory-mapped) shard
        file = weight_map[name]
        if file not in handles:
            handles[file] = safe_open(os.path.join(path, file), "pt")
        return handles[file].get_tensor(name)

    expected, unexpected = _expected_hf_tensors(model), []
    relayout = ckpt_interleave is not None and ckpt_interleave != model.cfg.rope_interleave
    todo, staged = set(expected), {}
    n_layers = model.cfg.n_layers
    for name in sorted(weight_map, key=lambda k: weight_map[k]):  # shard by shard
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        if name.endswith("_scale_inv") or "rotary_emb" in name or (layer and int(layer[1]) >= n_layers):
            continue  # FP8 scales are read with their weight; extra layers are the MTP module
        fused = re.match(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$", name)
        if fused:  # transformers-v5 fused experts: gate_up (E, 2I, C) gate first, down (E, C, I)
            w = read(name)
            parts = w.chunk(2, dim=1) if fused[2] == "gate_up_proj" else [w]
            projs = ["gate_proj", "up_proj"] if fused[2] == "gate_up_proj" else ["down_proj"]
            pieces = {f"{fused[1]}.{e}.{p}.weight": part[e] for p, part in zip(projs, parts) for e in range(w.shape[0])}
        else:
            pieces = {name: None}
        for hf, value in pieces.items():
            if hf not in expected:
                unexpected.append(hf)
                continue
            if value is None:
                value = read(hf)
                if value.element_size() == 1 and hf + "_scale_inv" in weight_map:
                    value = dequant_fp8(value, read(hf + "_scale_inv"))
            if relayout:
                value = permute_rope_rows(value, hf, model.cfg, to_half=ckpt_interleave)
            target, e = expected[hf]
            shape = target.shape if e is None else target.shape[1:]
            if value.shape != shape:
                raise ValueError(f"shape mismatch for {hf}: checkpoint {tuple(value.shape)} vs model {tuple(shape)}")
            if e is None:
                assign(target, value)
            elif assign is _copy:
                _copy(target[e], value)
            else:  # stage the experts of one stacked parameter (E, ...), assign it whole when complete
                whole, left = staged.get(id(target), (torch.empty(target.shape, dtype=target.dtype), set()))
                whole[e] = value
                left = (left or set(range(target.shape[0]))) - {e}
                staged[id(target)] = (whole, left)
                if not left:
                    assign(target, staged.pop(id(target))[0])
            todo.discard(hf)
    if todo or unexpected:
        def show(names):
            names = sorted(names)
            return ", ".join(names[:20]) + (f" ... (+{len(names) - 20} more)" if len(names) > 20 else "")
        raise KeyError(f"checkpoint {path} does not match the model config: missing {len(todo)} tensors "
                       f"[{show(todo)}]; unexpected {len(unexpected)} tensors [{show(unexpected)}]")


def permute_rope_rows(w, hf, cfg, to_half):
    """Reorder the rope rows of a q/k projection between the interleaved layout (pairs 2i, 2i+1; DeepSeek files)
    and the half-split layout (pairs i, i+D/2; Qwen/Llama files). Other tensors are returned unchanged."""
    if cfg.attn == "mla":
        Dr, block = cfg.qk_rope_head_dim, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if hf.endswith(("q_proj.weight", "q_b_proj.weight")):
            starts = [h * block + cfg.qk_nope_head_dim for h in range(cfg.n_heads)]
        elif hf.endswith("kv_a_proj_with_mqa.weight"):
            starts = [cfg.kv_lora_rank]
        else:
            return w
    else:
        Dr = cfg.head_dim
        if ".q_proj." in hf or ".k_proj." in hf:
            starts = range(0, w.shape[0], Dr)
        else:
            return w
    half = torch.cat([torch.arange(0, Dr, 2), torch.arange(1, Dr, 2)])  # row j <- interleaved half[j]
    one = half if to_half else half.argsort()  # (Dr,)
    perm = torch.arange(w.shape[0])  # (rows,)
    for s in starts:
        perm[s:s + Dr] = s + one
    return w[perm]


def dequant_fp8(w, scale_inv, block=128):
    """FP8 weight (M, N) with one scale per 128x128 block (ceil(M/128), ceil(N/128)) -> float32 (M, N)."""
    M, N = w.shape
    s = scale_inv.float().repeat_interleave(block, 0)[:M].repeat_interleave(block, 1)[:, :N]  # (M, N)
    return w.float() * s  # (M, N)


def hf_tensors(cfg, name, t):
    """One of our state-dict tensors -> [(Hugging Face name, tensor)]: experts split one per expert as on the
    hub, GQA rope rows in the half-split layout HF expects; [] for tensors HF files do not hold (a tied head,
    V2's absent selection bias). Works on meta tensors too (checkpoint.py computes file headers with it)."""
    if (name == "lm_head.weight" and cfg.tie_embeddings) or (name.endswith("ffn.bias") and cfg.score_func == "softmax"):
        return []
    hf = hf_name(name)
    if cfg.attn == "gqa" and cfg.rope_interleave:  # Qwen2/Llama files are half-split
        t = permute_rope_rows(t, hf, cfg, to_half=True)
    if "{e}" in hf:
        return [(hf.format(e=e), t[e].contiguous()) for e in range(t.shape[0])]
    return [(hf, t.contiguous())]


def hf_state_dict(model):
    """Our weights under Hugging Face names, experts split per expert as on the hub."""
    return {k: v for name, t in model.state_dict().items() for k, v in hf_tensors(model.cfg, name, t)}
