"""Reference (spec) for manifold-constrained hyper-connections (mHC), in fp32 (float64 inputs: in float64,
the high-precision reference of the bf16 tests).

``naive_mhc_pre`` is the checkpoint-compatible DeepSeek-V4 formulation as written in transformers'
``DeepseekV4HyperConnection`` (``shared/reference/mhc_engram.md`` §3 and §3.1: packed ``fn``
[(2+n)n, nD] in the order [pre | post | comb], softmax-started Sinkhorn with columns normalised last,
post = 2·sigmoid, pre = sigmoid + eps). ``naive_mhc_post`` applies the coefficients with the TileKernels
/ V4 transpose convention: new[k] = post[k]·block_out + sum_j comb[j, k]·streams[j] (X' = combᵀX).

``mhc_coefficients`` is the per-token coefficient math (pre, post, Sinkhorn comb) on its own, the
spec that the Triton kernels' coefficient epilogue and Sinkhorn backward reproduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mhc_coefficients", "naive_mhc_pre", "naive_mhc_post"]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32, or in float64 when it already is: the precision every reference computes in."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def mhc_coefficients(
    mixes: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, n: int, sinkhorn_iters: int, hc_eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn the normalised projections into (pre, post, comb), all fp32 (float64 for float64 inputs).

    Args:
        mixes: [..., (2+n)n] = RMSNorm(flat streams) @ fn.T, fp32 (or float64).
        base: [(2+n)n] static logits; scale: [3] gains (pre, post, comb).

    Returns:
        pre [..., n] in (eps, 1+eps); post [..., n] in (0, 2); comb [..., n, n] ~ doubly stochastic; fp32
        (float64 for float64 inputs).
    """
    wide = torch.promote_types(_wide(mixes).dtype, _wide(base).dtype)  # fp32, or float64
    pre_w, post_w, comb_w = mixes.to(wide).split([n, n, n * n], dim=-1)
    pre_b, post_b, comb_b = base.to(wide).split([n, n, n * n])
    scale = scale.to(wide)
    pre = torch.sigmoid(pre_w * scale[0] + pre_b) + hc_eps
    post = 2 * torch.sigmoid(post_w * scale[1] + post_b)
    comb_w = comb_w.reshape(*comb_w.shape[:-1], n, n)  # [..., n, n]
    comb = torch.softmax(comb_w * scale[2] + comb_b.view(n, n), dim=-1) + hc_eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)  # columns
    for _ in range(sinkhorn_iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + hc_eps)  # rows
        comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)  # columns
    return pre, post, comb


def naive_mhc_pre(
    streams: torch.Tensor,
    fn: torch.Tensor,
    base: torch.Tensor,
    scale: torch.Tensor,
    sinkhorn_iters: int,
    hc_eps: float,
    norm_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coefficients of one mHC site and the collapsed block input.

    Args:
        streams: [B, S, n, D] residual streams.
        fn: [(2+n)n, nD] packed projection; base: [(2+n)n]; scale: [3].
        sinkhorn_iters: Sinkhorn iterations (V4: 20); hc_eps: mHC epsilon; norm_eps: RMSNorm epsilon.

    Returns:
        post [B, S, n] fp32, comb [B, S, n, n] fp32, collapsed [B, S, D] in ``streams.dtype``
        (post and comb float64 when streams or fn are float64).
    """
    n = streams.shape[-2]
    wide = torch.promote_types(_wide(streams).dtype, _wide(fn).dtype)  # fp32, or float64
    x = streams.flatten(-2).to(wide)  # [B,S,nD]
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + norm_eps)  # unweighted RMSNorm over nD
    mixes = F.linear(x, fn.to(wide))  # [B,S,(2+n)n]
    pre, post, comb = mhc_coefficients(mixes, base, scale, n, sinkhorn_iters, hc_eps)
    collapsed = (pre.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)  # [B,S,D]
    return post, comb, collapsed


def naive_mhc_post(
    block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    """Expand the block output and mix the residual streams.

    Args:
        block_out: [B, S, D] output of the attention or FFN block.
        streams: [B, S, n, D] the block's input streams.
        post: [B, S, n]; comb: [B, S, n, n] (used transposed: sum over its first stream axis).

    Returns:
        [B, S, n, D] new streams in ``streams.dtype`` (computed in fp32, or float64 for float64 inputs).
    """
    expanded = _wide(post).unsqueeze(-1) * _wide(block_out).unsqueeze(-2)  # [B,S,n,D]
    mixed = torch.einsum("bsjk,bsjd->bskd", _wide(comb), _wide(streams))  # [B,S,n,D] = comb^T @ X
    return (expanded + mixed).to(streams.dtype)
