"""Manifold-constrained hyper-connections (mHC; Xie et al. 2026, ../shared/reference/mhc_engram.md §3).

The residual is `n = hc_mult` parallel streams [B, S, n, D]. Before each sub-block (attention or FFN) a small
projection of the RMS-normalised, flattened streams gives, per token:

- `pre`  [n]     weights that collapse the streams into the block input,
- `post` [n]     weights that spread the block output back over the streams,
- `comb` [n, n]  a residual mixing matrix projected towards the doubly-stochastic manifold by Sinkhorn-Knopp,

and the update is `streams'[k] = post[k] * f(sum_i pre[i] streams[i]) + sum_j comb[j, k] streams[j]`.

We follow the checkpoint-compatible formulation (DeepSeek-V4 weights, transformers' port): `pre = sigmoid(.) + eps`,
`post = 2 sigmoid(.)`, `comb = softmax(.) + eps` then one column normalisation and `iters - 1` row/column rounds, and
`comb` consumed transposed. The paper writes `exp` instead of softmax-then-normalise (mhc_engram.md §3.1).
With n = 1 and a zero projection, `pre` is a constant that the block's own RMSNorm removes and `post = comb = 1`
(up to eps): the block reduces to the plain pre-norm residual `x + f(norm(x))` (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HyperConfig
from ..kernels.dispatch import use_triton
from .norm import rms_normalize


def sinkhorn(comb: torch.Tensor, iters: int, eps: float, tol: float | None = None) -> torch.Tensor:
    """Alternating column / row normalisation of positive [.., n, n] matrices (column first, as V4 does).

    With `tol`, stops early once every row and column sums to 1 within `tol` (the remaining rounds would change
    the matrix by less than that); checking needs a host sync, so callers enable it only for CPU inference.
    """
    comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    for i in range(iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + eps)
        col = comb.sum(dim=-2, keepdim=True) + eps
        comb = comb / col
        if tol is not None and i % 2 == 1 and float((col - 1).abs().max()) < tol:
            break
    return comb


class HyperConnection(nn.Module):
    """Computes (post, comb, collapsed block input) from the streams. Parameters in fp32.

    fn [(2+n)n, nD], base [(2+n)n], scale [3]  (DeepSeek names: hc_{attn,ffn}_{fn,base,scale})
    """

    def __init__(self, hidden_size: int, cfg: HyperConfig, norm_eps: float) -> None:
        super().__init__()
        n = cfg.hc_mult
        self.n, self.iters, self.eps, self.norm_eps = n, cfg.hc_sinkhorn_iters, cfg.hc_eps, norm_eps
        self.fn = nn.Parameter(torch.zeros((2 + n) * n, n * hidden_size))
        self.base = nn.Parameter(torch.zeros((2 + n) * n))
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if use_triton("mhc_pre", streams):                    # fused norm + projection + Sinkhorn + collapse
            from ..kernels.mhc import mhc_pre
            return mhc_pre(streams, self.fn, self.base, self.scale, self.iters, self.eps, self.norm_eps)
        n = self.n
        flat = rms_normalize(streams.flatten(-2).float(), self.norm_eps)              # [B, S, nD]
        mixes = F.linear(flat, self.fn.float())                                       # [B, S, (2+n)n]
        pre_w, post_w, comb_w = mixes.split([n, n, n * n], dim=-1)
        pre_b, post_b, comb_b = self.base.float().split([n, n, n * n])
        scale = self.scale.float()
        pre = torch.sigmoid(pre_w * scale[0] + pre_b) + self.eps                      # [B, S, n]
        post = 2 * torch.sigmoid(post_w * scale[1] + post_b)                          # [B, S, n]
        comb = torch.softmax(comb_w.unflatten(-1, (n, n)) * scale[2] + comb_b.view(n, n), dim=-1) + self.eps
        fast = comb.device.type == "cpu" and not (torch.is_grad_enabled() and self.fn.requires_grad)
        comb = sinkhorn(comb, self.iters, self.eps, tol=1e-7 if fast else None)       # [B, S, n, n]
        collapsed = (pre.unsqueeze(-1) * streams).sum(dim=-2).to(streams.dtype)       # [B, S, D]
        return post, comb, collapsed


def hyper_update(block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """streams'[.., k, :] = post[k] * block_out + sum_j comb[j, k] * streams[.., j, :].

    block_out [B, S, D], streams [B, S, n, D], post [B, S, n], comb [B, S, n, n] -> [B, S, n, D]
    """
    if use_triton("mhc_post", streams):
        from ..kernels.mhc import mhc_post
        return mhc_post(block_out, streams, post, comb)
    dtype = streams.dtype
    mixed = torch.matmul(comb.to(dtype).transpose(-1, -2), streams)                   # [B, S, n, D]
    return post.to(dtype).unsqueeze(-1) * block_out.unsqueeze(-2) + mixed


class HyperHead(nn.Module):
    """Final collapse of the streams before the last norm: sum_i (sigmoid(.) + eps)_i streams[i].

    fn [n, nD], base [n], scale [1]  (DeepSeek names: hc_head_{fn,base,scale})
    """

    def __init__(self, hidden_size: int, cfg: HyperConfig, norm_eps: float) -> None:
        super().__init__()
        n = cfg.hc_mult
        self.eps, self.norm_eps = cfg.hc_eps, norm_eps
        self.fn = nn.Parameter(torch.zeros(n, n * hidden_size))
        self.base = nn.Parameter(torch.zeros(n))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        flat = rms_normalize(streams.flatten(-2).float(), self.norm_eps)              # [B, S, nD]
        pre = torch.sigmoid(F.linear(flat, self.fn.float()) * self.scale.float() + self.base.float()) + self.eps
        return (pre.unsqueeze(-1) * streams).sum(dim=-2).to(streams.dtype)            # [B, S, D]
