"""Triton kernel for the lightning-indexer scores of one query chunk. Kernels only.

One program computes a [BS queries x BT keys] tile of

    score[s, t] = scale * sum_h w[s, h] * relu(q[s, h] . k[t]),   -inf where t >= threshold[s].

The key tile [BT, Di] is loaded once and reused by all Hi heads (one key per token, shared by the
heads: ``shared/reference/attention.md`` §2.1), and the head sum happens in registers, so the
[S, Hi, T] logits never exist in memory (DeepGEMM's ``fp8_mqa_logits`` computes the same
ReLU-weighted head sum, performance.md §2). A tile lying wholly at or past every query's threshold
(the future half of a causal prefill) is written as -inf without any arithmetic.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["indexer_scores_kernel"]


@triton.jit
def indexer_scores_kernel(
    q_ptr, k_ptr, w_ptr, thr_ptr, out_ptr,
    C, T, Hi, Di, scale,
    sqb, sqs, sqh, sqd, skb, skt, skd, swb, sws, swh, stb, sts, sob, sos, sot,
    BS: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    """Scores for queries [0, C) of the chunk (pointers already offset to it); grid (B * C/BS, T/BT)."""
    n_sblk = tl.cdiv(C, BS)
    pid = tl.program_id(0)
    b = (pid // n_sblk).to(tl.int64)
    ss = (pid % n_sblk) * BS + tl.arange(0, BS)  # [BS] query rows in the chunk
    ts = tl.program_id(1) * BT + tl.arange(0, BT)  # [BT] key positions
    smask = ss < C
    tmask = ts < T
    thr = tl.load(thr_ptr + b * stb + ss * sts, mask=smask, other=0)  # [BS]
    acc = tl.full((BS, BT), float("-inf"), tl.float32)
    if tl.program_id(1) * BT < tl.max(thr):  # otherwise every entry of the tile is excluded
        ds = tl.arange(0, BD)
        dmask = ds < Di
        kt = tl.load(k_ptr + b * skb + ts[:, None] * skt + ds[None, :] * skd,
                     mask=tmask[:, None] & dmask[None, :], other=0.0)  # [BT, BD]
        acc = tl.zeros((BS, BT), tl.float32)
        for h in range(Hi):
            qh = tl.load(q_ptr + b * sqb + ss[:, None] * sqs + h * sqh + ds[None, :] * sqd,
                         mask=smask[:, None] & dmask[None, :], other=0.0)  # [BS, BD]
            wh = tl.load(w_ptr + b * swb + ss * sws + h * swh, mask=smask, other=0.0).to(tl.float32)
            logits = tl.dot(qh, tl.trans(kt), input_precision=PREC)  # [BS, BT]
            acc += tl.maximum(logits, 0.0) * wh[:, None]
        acc = tl.where(ts[None, :] < thr[:, None], acc * scale, float("-inf"))
    tl.store(out_ptr + b * sob + ss[:, None] * sos + ts[None, :] * sot, acc,
             mask=smask[:, None] & tmask[None, :])
