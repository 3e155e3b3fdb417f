"""Public lightning-indexer selection ``indexer_topk``: chunked scores, then top-k per query.

Dispatch (``kernels/dispatch.py``): the Triton score kernel on CUDA or under the interpreter, else
:func:`~multimodal.kernels.indexer.naive.naive_indexer_topk` (logged once). Either way the queries
are processed ``chunk_size`` at a time and only one B x chunk x T fp32 score buffer exists; the
selection on that buffer is ``torch.topk`` (sorted, descending). Indices are not differentiable.

Dtypes: q and k meet in one ``tl.dot``, so they are cast to one dtype first (``dispatch.common_dtype``:
under bf16 autocast, bf16 queries and fp32 keys are scored in bf16); the weights are read as fp32 in the
kernel, whatever their dtype. If Triton still cannot compile the kernel for a call's dtypes, the op
runs the reference instead (``dispatch.run_or_fall_back``, one WARNING).
"""

from __future__ import annotations

import torch

from ..dispatch import (cast, cdiv, common_dtype, dot_precision, dtype_signature, next_power_of_2, run_or_fall_back,
                        use_triton)
from .naive import DEFAULT_CHUNK_SIZE, naive_indexer_topk, select_topk

__all__ = ["indexer_topk", "indexer_scores"]


def _tiles(device: torch.device) -> tuple[int, int]:
    """(BS queries, BT keys) per program: tensor-core tiles on a GPU, small ones for the CPU interpreter."""
    return (32, 64) if device.type == "cuda" else (16, 16)


def indexer_scores(
    q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, threshold: torch.Tensor, scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton scores for one chunk: q [B,C,Hi,Di], k [B,T,Di], weights [B,C,Hi], threshold [B,C] -> [B,C,T] fp32.

    q and k (one ``tl.dot``) are cast to their common dtype here (a no-op when ``indexer_topk`` already did);
    weights may be any float dtype (read as fp32), threshold any integer dtype.
    """
    from .triton import indexer_scores_kernel

    q, k = cast(common_dtype(q, k), q, k)  # q [B,C,Hi,Di], k [B,T,Di]: one dtype for the dot
    B, C, Hi, Di = q.shape
    T = k.shape[1]
    if out is None:
        out = torch.empty(B, C, T, dtype=torch.float32, device=q.device)
    BS, BT = _tiles(q.device)
    BD = max(16, next_power_of_2(Di))
    grid = (B * cdiv(C, BS), cdiv(T, BT))
    indexer_scores_kernel[grid](
        q, k, weights, threshold, out, C, T, Hi, Di, float(scale),
        *q.stride(), *k.stride(), *weights.stride(), *threshold.stride(), *out.stride(),
        BS=BS, BT=BT, BD=BD, PREC=dot_precision(q.dtype),
    )
    return out


@torch.no_grad()
def indexer_topk(
    q: torch.Tensor,
    k: torch.Tensor,
    weights: torch.Tensor,
    threshold: torch.Tensor,
    topk: int,
    scale: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Select, per query, the entries with the largest lightning-indexer scores.

    Args:
        q: [B, S, Hi, Di] indexer queries. k: [B, T, Di] indexer keys (one per entry).
        weights: [B, S, Hi] per-head query weights.
        threshold: [B, S] int64; entries t >= threshold[b, s] are excluded.
        topk: number of entries to select (clipped to T). scale: score multiplier.
        chunk_size: queries scored at once; bounds the score buffer to B x chunk_size x T fp32.

    Returns:
        [B, S, min(topk, T)] int64, sorted by descending score; -1 where the pick is excluded.
    """
    if q.dim() != 4 or k.dim() != 3 or weights.shape != q.shape[:3] or threshold.shape != q.shape[:2]:
        raise ValueError(f"indexer_topk: expected q [B,S,Hi,Di], k [B,T,Di], weights [B,S,Hi], threshold "
                         f"[B,S]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(weights.shape)}, "
                         f"{tuple(threshold.shape)}")
    if k.shape[0] != q.shape[0] or k.shape[2] != q.shape[3]:
        raise ValueError(f"indexer_topk: k {tuple(k.shape)} does not match q {tuple(q.shape)}")
    if topk < 1 or chunk_size < 1:
        raise ValueError(f"indexer_topk: topk={topk} and chunk_size={chunk_size} must be >= 1")
    if q.numel() == 0 or k.shape[1] == 0 or not use_triton("indexer_topk", q):
        return naive_indexer_topk(q, k, weights, threshold, topk, scale, chunk_size)

    def kernel() -> torch.Tensor:
        qc, kc = cast(common_dtype(q, k), q, k)  # q [B,S,Hi,Di], k [B,T,Di] in one dtype, cast once for all chunks
        B, S = q.shape[:2]
        T = k.shape[1]
        thr = threshold.long()  # [B,S] int64
        out = torch.empty(B, S, min(topk, T), dtype=torch.int64, device=q.device)
        buf = torch.empty(B, min(chunk_size, S), T, dtype=torch.float32, device=q.device)  # the only score buffer
        for s0 in range(0, S, chunk_size):
            s1 = min(S, s0 + chunk_size)
            scores = indexer_scores(qc[:, s0:s1], kc, weights[:, s0:s1], thr[:, s0:s1], scale, buf[:, : s1 - s0])
            out[:, s0:s1] = select_topk(scores, topk)
        return out  # [B,S,min(topk,T)] int64, as the reference

    return run_or_fall_back("indexer_topk", dtype_signature(q, k, weights), kernel,
                            lambda: naive_indexer_topk(q, k, weights, threshold, topk, scale, chunk_size))
