"""RMSNorm (weighted and unweighted), computed in float32 as DeepSeek does."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """`y = w * x / sqrt(mean(x^2) + eps)`; statistics and the weight product in fp32, cast back once.

    x: [..., dim] -> [..., dim]
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * x).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Unweighted RMSNorm over the last dim (V4's per-head query norm and mHC's input norm)."""
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)
