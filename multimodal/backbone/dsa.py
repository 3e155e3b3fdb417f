"""DeepSeek Sparse Attention (DeepSeek-V3.2; ../shared/reference/attention.md §2).

A lightning indexer scores every (query t, earlier token s) pair cheaply,

    I[t, s] = sum_h  w[t, h] * ReLU(q_I[t, h] . k_I[s]) * index_head_dim^-1/2,     w = x W_w * index_n_heads^-1/2

with `q_I = wq_b(q_lora residual)` (the MLA query's own compressed latent), one key per token
`k_I = LayerNorm(wk x)` (LayerNorm WITH bias, eps 1e-6) shared by all indexer heads, and NON-interleaved
(half-split) RoPE on the FIRST `qk_rope_head_dim` dims of q_I and k_I (the Nov-2025 fix, §2.2; MLA itself keeps
interleaved pairs on the last dims). The top-`index_topk` tokens per query (ties broken towards the earlier token)
are the only keys MLA attends (§2.3): an additive -inf mask over the unselected ones, in either MLA mode. With
`index_topk >= ` the number of visible keys this is exactly dense MLA (tested).

Training hooks (§2.4; `multimodal/training/indexer_loss.py`):
- `dense_attention = True`: the dense warm-up; attention ignores the selection, the indexer is still scored;
- `detach_indexer_input = True`: the sparse stage; the indexer sees detached inputs, so it learns only from its
  KL loss while the main model learns only from the LM loss;
- `record = True`: keep `last_index_scores` [B, S, L] (with grad), `last_selection` [B, S, L] bool and MLA's
  `last_probs` [B, H, S, L] for the loss.

Caching: the indexer keys of past tokens live in `LayerState.indexer.entries` [B, L, index_head_dim].
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AttentionConfig
from .attention import window_bias
from .cache import LayerState
from .context import ForwardContext
from .indexer import index_scores
from .mla import MLA


def apply_rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the LEADING `2 * cos.shape[-1]` dims of x in half-split pairs (x[j], x[j + rd/2]) (NeoX style).

    x [B, S, ..., D]; cos, sin [B, S, rd/2] (broadcast over the middle dims). Computed in fp32.
    """
    half = cos.shape[-1]
    for _ in range(x.dim() - cos.dim()):
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    a, b, rest = x[..., :half].float(), x[..., half:2 * half].float(), x[..., 2 * half:]
    rotated = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).to(x.dtype)
    return torch.cat([rotated, rest], dim=-1)


def topk_mask(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """scores [B, S, L] (-inf = not visible) -> bool [B, S, L], True at each row's top-min(topk, L) entries.

    Ties are broken towards the earlier key (stable sort), so a query selects the same keys whether it is decoded
    alone or inside a longer prefill. Selected entries whose score is -inf stay invisible through the causal mask.
    """
    if topk <= 0:
        raise ValueError(f"index_topk must be > 0, got {topk}")
    k = min(topk, scores.shape[-1])
    idx = scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]          # [B, S, k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)


class DSAIndexer(nn.Module):
    """wq_b [Hi*Di, q_lora], wk [Di, dim], k_norm (LayerNorm Di, with bias), weights_proj [Hi, dim]."""

    def __init__(self, dim: int, cfg: AttentionConfig) -> None:
        super().__init__()
        if not cfg.q_lora_rank:
            raise ValueError(f"DSA needs the MLA query latent: attention.q_lora_rank must be > 0, got {cfg.q_lora_rank}")
        self.n_heads, self.head_dim, self.rope = cfg.index_n_heads, cfg.index_head_dim, cfg.qk_rope_head_dim
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(dim, self.n_heads, bias=False)

    def project(self, x: torch.Tensor, q_res: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, S, dim], q_res [B, S, q_lora] -> q [B, S, Hi, Di], k [B, S, Di], head weights [B, S, Hi] (fp32)."""
        b, s, _ = x.shape
        q = apply_rope_half(self.wq_b(q_res).view(b, s, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope_half(self.k_norm(self.wk(x)), cos, sin)
        w = self.weights_proj(x).float() * self.n_heads ** -0.5
        return q, k, w

    def scores(self, q: torch.Tensor, keys: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """q [B, S, Hi, Di], keys [B, L, Di], w [B, S, Hi] -> I [B, S, L] (fp32)."""
        return index_scores(q, keys, w, self.head_dim ** -0.5)


class DSA(MLA):
    """MLA whose keys are restricted per query to the lightning indexer's top-`index_topk` tokens.

    Parameters: MLA's plus `indexer.{wq_b, wk, k_norm, weights_proj}`. x [B, S, dim] -> [B, S, dim].
    """

    def __init__(self, dim: int, cfg: AttentionConfig, eps: float) -> None:
        super().__init__(dim, cfg, eps)
        if cfg.index_topk <= 0:
            raise ValueError(f"attention.index_topk must be > 0, got {cfg.index_topk}")
        self.topk = cfg.index_topk
        self.indexer = DSAIndexer(dim, cfg)
        self.dense_attention = False
        self.detach_indexer_input = False
        self.last_index_scores: torch.Tensor | None = None
        self.last_selection: torch.Tensor | None = None
        self.last_visible: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, ctx: ForwardContext, state: LayerState | None) -> torch.Tensor:
        cos, sin = ctx.rope["main"]
        q, q_res = self.query(x, cos, sin)
        c_kv, k_pe = self.latents(x, cos, sin)
        c_kv, k_pe, k_index, k_valid = self.cached_latents(c_kv, k_pe, ctx, state)
        bias = window_bias(ctx.q_index, k_index, k_valid, None, q.dtype)             # [B, 1, S, L]

        xi, qi = (x.detach(), q_res.detach()) if self.detach_indexer_input else (x, q_res)
        iq, ik, iw = self.indexer.project(xi, qi, cos, sin)
        if state is not None:
            ik = state.indexer.append(ik)                                            # [B, L, Di]
        scores = self.indexer.scores(iq, ik, iw) + bias[:, 0].float()                # [B, S, L]
        selected = topk_mask(scores, self.topk)
        if self.record:
            self.last_index_scores, self.last_selection = scores, selected
            self.last_visible = torch.isfinite(bias[:, 0])
        if not self.dense_attention:
            bias = bias.masked_fill(~selected.unsqueeze(1), float("-inf"))
        out = self.attend(q, c_kv, k_pe, bias)                                       # [B, S, H, v]
        return self.wo(out.flatten(2))
