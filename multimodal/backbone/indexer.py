"""The lightning indexer of V4's CSA layers (DeepSeek-V4 report §2.3.1; V3.2's DSA, attention.md §2).

It compresses the sequence with its own small compressor (head dim `index_head_dim`, same windows as the
attention's), and scores each query t against each compressed entry s:

    I[t, s] = sum_h  w[t, h] * ReLU(q[t, h] . k[s]) * index_head_dim^-1/2,   w = x W_w * n_heads^-1/2

then keeps the top-`index_topk` entries whose window ended at or before t; the rest are marked -1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AttentionConfig
from ..kernels.dispatch import use_triton
from .cache import CompressorState
from .compressor import Compressor
from .rope import RotaryEmbedding, apply_rope


def index_scores(q: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, S, H, Di], keys [B, T, Di], weights [B, S, H] (already scaled) -> scores [B, S, T] (fp32)."""
    scores = torch.matmul(q.float(), keys.transpose(-1, -2).float().unsqueeze(1))    # [B, S, H, T]
    scores = F.relu(scores) * scale
    return (scores * weights.unsqueeze(-1)).sum(dim=2)                              # [B, S, T]


def select_topk(scores: torch.Tensor, threshold: torch.Tensor, topk: int) -> torch.Tensor:
    """scores [B, S, T]; entries s >= threshold [B, S] are not yet complete. -> indices [B, S, min(topk, T)], -1 = none."""
    t = scores.shape[-1]
    k = min(topk, t)
    if t == 0:
        return scores.new_zeros(*scores.shape[:2], 0, dtype=torch.long)
    future = torch.arange(t, device=scores.device).view(1, 1, -1) >= threshold.unsqueeze(-1)   # [B, S, T]
    # a stable sort breaks ties (frequent: ReLU scores are often exactly 0) towards the earlier entry, so the same
    # query picks the same entries whether it is decoded alone or inside a longer prefill
    idx = scores.masked_fill(future, float("-inf")).sort(dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.where(idx >= threshold.unsqueeze(-1), torch.full_like(idx, -1), idx)


class Indexer(nn.Module):
    """wq_b [Hi*Di, q_lora], weights_proj [Hi, dim], compressor (overlapping, Di wide)."""

    def __init__(self, dim: int, cfg: AttentionConfig, eps: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.rate = cfg.compress_rate_csa
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.weights_proj = nn.Linear(dim, self.n_heads, bias=False)
        self.compressor = Compressor(dim, self.head_dim, self.rate, overlap=True, eps=eps)

    def forward(self, x: torch.Tensor, q_residual: torch.Tensor, positions: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], rotary: RotaryEmbedding,
                state: CompressorState | None) -> torch.Tensor:
        """x [B, S, dim], q_residual [B, S, q_lora] -> top-k entry indices [B, S, k] (-1 = invalid)."""
        b, s, _ = x.shape
        keys = self.compressor(x, rotary, state)                                     # [B, T, Di]
        q = self.wq_b(q_residual).view(b, s, self.n_heads, self.head_dim)            # [B, S, Hi, Di]
        q = apply_rope(q, *rope)
        w = self.weights_proj(x).float() * self.n_heads ** -0.5                      # [B, S, Hi]
        threshold = (positions + 1) // self.rate
        if keys.shape[1] and use_triton("indexer_topk", q):     # chunked scoring: no [B, S, T] buffer
            from ..kernels.indexer import indexer_topk
            return indexer_topk(q, keys, w, threshold, self.topk, self.head_dim ** -0.5)
        scores = index_scores(q, keys, w, self.head_dim ** -0.5)
        return select_topk(scores, threshold, self.topk)
