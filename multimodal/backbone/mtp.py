"""Multi-token prediction (DeepSeek-V3 report §2.2): module k predicts token t + 1 + k from the hidden state at t and
the embedding of token t + k, through its own transformer block, sharing the embedding and output head.

    h' = eh_proj([enorm(embed(x_{t+k})) ; hnorm(h_t)]) -> block -> (mHC collapse) -> norm -> head
"""

from __future__ import annotations

import torch
from torch import nn

from .hyper import HyperHead
from .norm import RMSNorm


class MTPModule(nn.Module):
    """enorm, hnorm [dim]; eh_proj [dim, 2*dim]; block (a `Block`); hc_head (with mHC); norm."""

    def __init__(self, dim: int, block: nn.Module, hc_head: HyperHead | None, eps: float) -> None:
        super().__init__()
        self.enorm, self.hnorm = RMSNorm(dim, eps), RMSNorm(dim, eps)
        self.eh_proj = nn.Linear(2 * dim, dim, bias=False)
        self.block = block
        self.hc_head = hc_head
        self.norm = RMSNorm(dim, eps)

    def forward(self, hidden: torch.Tensor, next_embeds: torch.Tensor, ctx, n_streams: int) -> torch.Tensor:
        """hidden [B, S, dim] (the main model's final hidden states), next_embeds [B, S, dim] -> [B, S, dim]."""
        h = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        if self.hc_head is not None:
            h = h.unsqueeze(2).expand(-1, -1, n_streams, -1).contiguous()           # [B, S, n, dim]
        h = self.block(h, ctx, None)
        if self.hc_head is not None:
            h = self.hc_head(h)
        return self.norm(h)
