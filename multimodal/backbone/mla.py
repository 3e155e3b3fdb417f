"""Multi-head latent attention (DeepSeek-V2/V3; ../shared/reference/attention.md §1).

Queries and keys/values pass through low-rank latents; the only positional part of a key is one decoupled
`qk_rope_head_dim` rotary key shared by all heads (interleaved pairs, §1.3), so the cache holds just the normalised
KV latent `c_kv` [kv_lora_rank] and the post-RoPE key `k_pe` [qk_rope_head_dim] per token (§1.5).

Two execution modes give the same result within fp32 rounding (§1.6; tested):

- "mha" (training and prefill): the latents are expanded per head by `wkv_b` (rows grouped per head as
  [k_nope | v]) and ordinary multi-head attention runs over [k_nope ; k_pe] / v;
- "absorb" (decode): `W_UK` is folded into the query (`q_lat = q_nope W_UK_h`, [H, kv_lora]) and the attention is
  multi-query over the cached [c_kv ; k_pe] (kv_lora + rope dims), whose first kv_lora dims are also the values;
  `W_UV` maps the latent output back per head. The softmax scale stays (nope + rope)^-1/2 * mscale^2, never
  (kv_lora + rope)^-1/2 (§1.6, test 6).

`MLA.mode` picks one: "auto" (the default) runs "mha" for calls with more than one new token and "absorb" for
single-token decode steps, as the V3.2 reference does.

YaRN: with `rope_scaling`, the rotary frequencies are ramped and the softmax scale gains `mscale(factor,
mscale_all_dim)^2` (attention.md §1.4).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AttentionConfig
from .attention import window_bias
from .cache import LayerState
from .context import ForwardContext
from .norm import RMSNorm
from .rope import apply_rope, yarn_mscale

MLA_MODES = ("auto", "mha", "absorb")


class MLA(nn.Module):
    """wq_a [q_lora, dim], q_norm, wq_b [H*(nope+rope), q_lora] (or wq when q_lora_rank = 0),
    wkv_a [kv_lora + rope, dim], kv_norm, wkv_b [H*(nope+v), kv_lora], wo [dim, H*v].

    x [B, S, dim] -> [B, S, dim]. `mode` in {"auto", "mha", "absorb"} (see the module docstring).
    """

    def __init__(self, dim: int, cfg: AttentionConfig, eps: float) -> None:
        super().__init__()
        h = cfg.num_attention_heads
        self.n_heads, self.nope, self.rope, self.v_dim = h, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.mode = "auto"
        self.record = False                       # keep the last attention probabilities (indexer training)
        self.last_probs: torch.Tensor | None = None
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

    # ---------------------------------------------------------------------------------------------- projections
    def query(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, S, dim] -> (q [B, S, H, nope+rope] with RoPE on the last rope dims, q_lora residual or None)."""
        b, s, _ = x.shape
        q_res = self.q_norm(self.wq_a(x)) if hasattr(self, "wq_a") else None
        q = self.wq_b(q_res) if q_res is not None else self.wq(x)
        q = q.view(b, s, self.n_heads, self.nope + self.rope)                        # [B, S, H, nope+rope]
        return apply_rope(q, cos, sin), q_res

    def latents(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, dim] -> (c_kv [B, S, kv_lora] normed, k_pe [B, S, rope] post-RoPE): what the cache stores."""
        c_kv, k_pe = self.wkv_a(x).split([self.kv_lora_rank, self.rope], dim=-1)
        return self.kv_norm(c_kv), apply_rope(k_pe, cos, sin)

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_UK [H, nope, kv_lora], W_UV [H, v, kv_lora]) sliced from `wkv_b` ([H*(nope+v), kv_lora])."""
        w = self.wkv_b.weight.view(self.n_heads, self.nope + self.v_dim, self.kv_lora_rank)
        return w[:, : self.nope], w[:, self.nope:]

    # ------------------------------------------------------------------------------------------------ attention
    def attend(self, q: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor, bias: torch.Tensor,
               mode: str | None = None) -> torch.Tensor:
        """q [B, S, H, nope+rope], c_kv [B, L, r], k_pe [B, L, rope], bias [B, 1|H, S, L] -> [B, S, H, v]."""
        mode = mode or self.mode
        if mode == "auto":
            mode = "absorb" if q.shape[1] == 1 else "mha"
        if mode not in MLA_MODES:
            raise ValueError(f"MLA mode must be one of {MLA_MODES}, got {mode!r}")
        if mode == "mha":
            return self._attend_expanded(q, c_kv, k_pe, bias)
        return self._attend_absorbed(q, c_kv, k_pe, bias)

    def _attend_expanded(self, q: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor,
                         bias: torch.Tensor) -> torch.Tensor:
        b, l = c_kv.shape[:2]
        kv = self.wkv_b(c_kv).view(b, l, self.n_heads, self.nope + self.v_dim)       # [B, L, H, nope+v]
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_pe.unsqueeze(2).expand(-1, -1, self.n_heads, -1)], dim=-1)   # [B, L, H, nope+rope]
        logits = torch.einsum("bshd,blhd->bhsl", q, k) * self.scale + bias
        probs = self._softmax(logits).to(v.dtype)
        return torch.einsum("bhsl,blhd->bshd", probs, v)                            # [B, S, H, v]

    def _attend_absorbed(self, q: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor,
                         bias: torch.Tensor) -> torch.Tensor:
        w_uk, w_uv = self.absorbed_weights()
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        q_lat = torch.einsum("bshd,hdc->bshc", q_nope, w_uk)                        # [B, S, H, r]
        logits = (torch.einsum("bshc,blc->bhsl", q_lat, c_kv)
                  + torch.einsum("bshr,blr->bhsl", q_pe, k_pe)) * self.scale + bias  # [B, H, S, L]
        probs = self._softmax(logits).to(c_kv.dtype)
        o_lat = torch.einsum("bhsl,blc->bshc", probs, c_kv)                         # [B, S, H, r]
        return torch.einsum("bshc,hdc->bshd", o_lat, w_uv)                          # [B, S, H, v]

    def _softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """fp32 softmax over keys; rows with no visible key (padding queries) give zeros, and no NaN gradient."""
        logits = logits.float()
        any_visible = torch.isfinite(logits).any(dim=-1, keepdim=True)
        probs = torch.softmax(logits.masked_fill(~any_visible, 0.0), dim=-1) * any_visible
        self.last_probs = probs if self.record else None                            # for the indexer's KL target
        return probs

    def cached_latents(self, c_kv: torch.Tensor, k_pe: torch.Tensor, ctx: ForwardContext,
                       state: LayerState | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append this call's latents to the cache (if any) -> (c_kv [B, L, r], k_pe [B, L, rope], index [L], valid [B, L])."""
        if state is None:
            return c_kv, k_pe, ctx.q_index, ctx.valid
        c_kv, k_pe, k_index, k_valid = state.window.extend(c_kv, ctx.q_index, ctx.valid, extra=k_pe)
        return c_kv, k_pe, k_index, k_valid

    def forward(self, x: torch.Tensor, ctx: ForwardContext, state: LayerState | None) -> torch.Tensor:
        cos, sin = ctx.rope["main"]
        q, _ = self.query(x, cos, sin)
        c_kv, k_pe = self.latents(x, cos, sin)
        c_kv, k_pe, k_index, k_valid = self.cached_latents(c_kv, k_pe, ctx, state)
        bias = window_bias(ctx.q_index, k_index, k_valid, None, q.dtype)            # [B, 1, S, L]
        out = self.attend(q, c_kv, k_pe, bias)                                      # [B, S, H, v]
        return self.wo(out.flatten(2))
