"""Reference (spec) for shared-KV multi-query attention over selected KV entries, in fp32.

This is what ``sparse_mqa`` must reproduce (issue #8, op 2; the FlashMLA sparse semantics of
``shared/reference/attention.md`` §4.2, in DeepSeek-V4's "MODEL1" form where one 512-d entry is both
key and value, §4.5). For query (b, s, h) and its K selected entries idx = indices[b, s]:

    logits[j] = scale * q[b, s, h] . kv[b, idx[j]]        for valid j (0 <= idx[j] < N), -inf otherwise
    p         = softmax([logits, sink[h]])[:K]            the sink is one extra logit whose value is 0
    out       = sum_j p[j] * kv[b, idx[j]]

With a sink the probabilities sum to less than 1. A row without any valid entry (and no sink) has
output 0 and gradient 0, never NaN (FlashMLA returns 0 there too). Autograd through this function is
the gradient reference.
"""

from __future__ import annotations

import torch

__all__ = ["naive_sparse_mqa", "gather_entries"]


def gather_entries(kv: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the selected entries: kv [B,N,D], indices [B,S,K] -> ([B,S,K,D] fp32, valid [B,S,K])."""
    B, N, _ = kv.shape
    valid = (indices >= 0) & (indices < N)  # [B,S,K]
    safe = torch.where(valid, indices, torch.zeros_like(indices))
    batch = torch.arange(B, device=kv.device)[:, None, None]  # [B,1,1]
    return kv.float()[batch, safe], valid  # [B,S,K,D]


def naive_sparse_mqa(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    scale: float,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse shared-KV MQA, materialising the gathered entries.

    Args:
        q: [B, S, H, D] queries.
        kv: [B, N, D] entries (key = value).
        indices: [B, S, K] int64 positions in N; -1 (or anything outside [0, N)) marks an unused slot.
        scale: softmax scale applied to q . kv.
        sink: optional [H] fp32 attention-sink logit per head.

    Returns:
        [B, S, H, D] in ``q.dtype``.
    """
    B, S, H, D = q.shape
    entries, valid = gather_entries(kv, indices)  # [B,S,K,D], [B,S,K]
    logits = torch.einsum("bshd,bskd->bshk", q.float(), entries) * scale  # [B,S,H,K]
    logits = logits.masked_fill(~valid[:, :, None, :], float("-inf"))
    if sink is not None:
        sink_col = sink.float().view(1, 1, H, 1).expand(B, S, H, 1)
        logits = torch.cat([logits, sink_col], dim=-1)  # [B,S,H,K+1]
    m = logits.amax(dim=-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all-invalid rows: avoid inf - inf
    p = torch.exp(logits - m)
    denom = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(denom > 0, denom, torch.ones_like(denom))  # all-invalid rows: p = 0
    p = p[..., : indices.shape[-1]]  # drop the sink column
    out = torch.einsum("bshk,bskd->bshd", p, entries)  # [B,S,H,D]
    return out.to(q.dtype)
