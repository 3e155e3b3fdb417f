"""Reference (spec) for the lightning indexer: scores and top-k selection, in fp32.

This is what ``indexer_topk`` must reproduce (issue #8, op 3; DSA's index score,
``shared/reference/attention.md`` §2.1-2.2, with one key per token shared by all indexer heads):

    score[b, s, t] = scale * sum_h weights[b, s, h] * relu(q[b, s, h] . k[b, t])
    score[b, s, t] = -inf                      where t >= threshold[b, s]   (causality / visibility)
    indices[b, s]  = the min(topk, T) largest scores, sorted by descending score,
                     with -1 wherever the chosen entry was excluded (fewer than topk visible entries)

Queries are processed in chunks of ``chunk_size`` so that at most B x chunk x T scores exist at once
(the full B x S x T matrix would be 64 GiB per layer at 128k tokens, attention.md §2 / performance.md §2).
"""

from __future__ import annotations

import torch

__all__ = ["naive_indexer_scores", "naive_indexer_topk", "select_topk", "DEFAULT_CHUNK_SIZE"]

#: queries per chunk; the score buffer is B x chunk x T fp32 (128 MiB for B=1, T=128k)
DEFAULT_CHUNK_SIZE = 256


def naive_indexer_scores(
    q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, threshold: torch.Tensor, scale: float
) -> torch.Tensor:
    """Index scores for a chunk of queries.

    Args:
        q: [B, C, Hi, Di] indexer queries; k: [B, T, Di] indexer keys; weights: [B, C, Hi];
        threshold: [B, C] int64, entries t >= threshold are excluded; scale: score multiplier.

    Returns:
        [B, C, T] fp32 scores, -inf at excluded entries.
    """
    logits = torch.einsum("bshd,btd->bsht", q.float(), k.float()).relu()  # [B,C,Hi,T]
    score = torch.einsum("bsht,bsh->bst", logits, weights.float()) * scale  # [B,C,T]
    t = torch.arange(k.shape[1], device=k.device)
    return score.masked_fill(t[None, None, :] >= threshold[..., None], float("-inf"))


def select_topk(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """Top-min(topk, T) indices of [B, C, T] scores, descending; excluded (-inf) picks become -1."""
    values, idx = scores.topk(min(topk, scores.shape[-1]), dim=-1, sorted=True)  # [B,C,k]
    return torch.where(values == float("-inf"), torch.full_like(idx, -1), idx)


def naive_indexer_topk(
    q: torch.Tensor,
    k: torch.Tensor,
    weights: torch.Tensor,
    threshold: torch.Tensor,
    topk: int,
    scale: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Indexer top-k with a per-chunk materialised score matrix.

    Args:
        q: [B, S, Hi, Di]; k: [B, T, Di]; weights: [B, S, Hi]; threshold: [B, S] int64;
        topk: entries to keep; scale: score multiplier; chunk_size: queries per chunk.

    Returns:
        [B, S, min(topk, T)] int64 indices into T, -1 for excluded picks.
    """
    B, S = q.shape[:2]
    out = torch.empty(B, S, min(topk, k.shape[1]), dtype=torch.int64, device=q.device)
    for s0 in range(0, S, chunk_size):
        s1 = min(S, s0 + chunk_size)
        scores = naive_indexer_scores(q[:, s0:s1], k, weights[:, s0:s1], threshold[:, s0:s1], scale)
        out[:, s0:s1] = select_topk(scores, topk)
    return out
