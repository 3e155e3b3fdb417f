"""Multi-head latent attention (DeepSeek-V2/V3; ../shared/reference/attention.md §1).

Queries and keys/values pass through low-rank latents; the only positional part of a key is one decoupled 64-dim
rotary key shared by all heads, so the cache holds just the normalised KV latent `c_kv` [kv_lora_rank] and the
post-RoPE key `k_pe` [qk_rope_head_dim] per token. This module runs in "MHA mode": the cached latents are expanded
per head by `wkv_b` (rows grouped per head as [k_nope | v]) at every call.

YaRN: with `rope_scaling`, the rotary frequencies are ramped and the softmax scale gains `mscale(factor,
mscale_all_dim)^2` (attention.md §1.4).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AttentionConfig
from .cache import LayerState
from .context import ForwardContext
from .norm import RMSNorm
from .rope import apply_rope, yarn_mscale
from .attention import window_bias


class MLA(nn.Module):
    """wq_a [q_lora, dim], q_norm, wq_b [H*(nope+rope), q_lora] (or wq when q_lora_rank = 0),
    wkv_a [kv_lora + rope, dim], kv_norm, wkv_b [H*(nope+v), kv_lora], wo [dim, H*v]."""

    def __init__(self, dim: int, cfg: AttentionConfig, eps: float) -> None:
        super().__init__()
        h = cfg.num_attention_heads
        self.n_heads, self.nope, self.rope, self.v_dim = h, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        qk = self.nope + self.rope
        if cfg.q_lora_rank:
            self.wq_a = nn.Linear(dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, eps)
            self.wq_b = nn.Linear(cfg.q_lora_rank, h * qk, bias=False)
        else:
            self.wq = nn.Linear(dim, h * qk, bias=False)
        self.wkv_a = nn.Linear(dim, cfg.kv_lora_rank + self.rope, bias=False)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank, eps)
        self.wkv_b = nn.Linear(cfg.kv_lora_rank, h * (self.nope + self.v_dim), bias=False)
        self.wo = nn.Linear(h * self.v_dim, dim, bias=False)
        self.scale = qk ** -0.5
        if cfg.rope_scaling is not None and cfg.rope_scaling.mscale_all_dim:
            self.scale *= yarn_mscale(cfg.rope_scaling.factor, cfg.rope_scaling.mscale_all_dim) ** 2

    def forward(self, x: torch.Tensor, ctx: ForwardContext, state: LayerState | None) -> torch.Tensor:
        b, s, _ = x.shape
        cos, sin = ctx.rope["main"]
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)
        q = q.view(b, s, self.n_heads, self.nope + self.rope)                        # [B, S, H, nope+rope]
        q = apply_rope(q, cos, sin)                                                 # rope on the last dims
        c_kv, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.rope], dim=-1)
        c_kv, k_pe = self.kv_norm(c_kv), apply_rope(k_pe, cos, sin)                 # [B, S, r], [B, S, rd]
        if state is None:
            k_index, k_valid = ctx.q_index, ctx.valid
        else:
            c_kv, k_pe, k_index, k_valid = state.window.extend(c_kv, ctx.q_index, ctx.valid, extra=k_pe)
        kv = self.wkv_b(c_kv).view(b, -1, self.n_heads, self.nope + self.v_dim)     # [B, L, H, nope+v]
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, self.n_heads, -1)], dim=-1)
        bias = window_bias(ctx.q_index, k_index, k_valid, None, q.dtype)            # [B, 1, S, L]
        logits = torch.einsum("bshd,blhd->bhsl", q, k) * self.scale + bias
        probs = torch.softmax(logits.float(), dim=-1).nan_to_num(0.0).to(v.dtype)    # padded rows: all-masked
        out = torch.einsum("bhsl,blhd->bshd", probs, v)                             # [B, S, H, v]
        return self.wo(out.flatten(2))
