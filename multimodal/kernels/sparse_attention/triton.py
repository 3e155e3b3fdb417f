"""Triton kernels for sparse shared-KV MQA (forward and backward). Kernels only.

One program owns one query token (b, s) and a block of ``BH`` heads. All heads of the token share
the token's index list, so each gathered KV tile [BK, D] is loaded once and used by every head of
the block for both products, q·kvᵀ and p·kv (the reason DeepSeek's sparse attention runs in MQA
mode, ``shared/reference/attention.md`` §2.1 and §4.2). The head dimension is handled in one padded
tile of ``BD`` = next power of two of D (512 in V4): heads are blocked by 16 to keep the fp32
accumulator [BH, BD] at 32 KiB.

The forward is an online softmax (FlashAttention-style) seeded with the sink logit, so the sink
enters the normaliser but never the output. It stores the log-sum-exp per (b, s, h); a row
with no valid entry and no sink gets output 0 and lse = +inf, so its backward probabilities are 0.
When there are too few (query, head-block) programs to fill the GPU (decode), the index list is
split across programs and the partial results merged by a small combine kernel.
The backward recomputes p from lse, accumulates dq in registers and scatters dkv with fp32 atomics,
because the same entry can be selected by many queries.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["sparse_mqa_fwd_kernel", "sparse_mqa_combine_kernel", "sparse_mqa_bwd_kernel"]


@triton.jit
def sparse_mqa_fwd_kernel(
    q_ptr, kv_ptr, idx_ptr, sink_ptr, o_ptr, lse_ptr,
    S, H, N, K, D, scale, split_len,
    sqb, sqs, sqh, sqd, skb, skn, skd, sib, sis, sik, sob, sos, soh, sod, so_split, slb, sls, slh, sl_split,
    HAS_SINK: tl.constexpr, PARTIAL: tl.constexpr,
    BH: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    """out[b, s, h] = softmax([scale q.kv[idx], sink])[:K] @ kv[idx]; grid (B*S, H/BH, splits).

    Split c handles index slots [c*split_len, (c+1)*split_len) (the sink belongs to split 0). With
    PARTIAL the split's normalised output and its lse (-inf when empty) go to fp32 buffers with an
    extra leading split axis, merged by ``sparse_mqa_combine_kernel``; otherwise the final output
    and lse (+inf when the row is empty) are stored directly.
    """
    pid = tl.program_id(0)
    b = (pid // S).to(tl.int64)
    s = (pid % S).to(tl.int64)
    split = tl.program_id(2)
    hs = tl.program_id(1) * BH + tl.arange(0, BH)  # [BH]
    hmask = hs < H
    ds = tl.arange(0, BD)
    dmask = ds < D
    q = tl.load(q_ptr + b * sqb + s * sqs + hs[:, None] * sqh + ds[None, :] * sqd,
                mask=hmask[:, None] & dmask[None, :], other=0.0)  # [BH, BD]
    m = tl.full((BH,), -1.0e30, tl.float32)  # finite start: exp(m - m_new) never sees inf - inf
    l = tl.zeros((BH,), tl.float32)
    if HAS_SINK:
        if split == 0:  # the sink is one extra column of value 0: it seeds the running max and sum
            m = tl.load(sink_ptr + hs, mask=hmask, other=0.0).to(tl.float32)
            l = tl.full((BH,), 1.0, tl.float32)
    acc = tl.zeros((BH, BD), tl.float32)
    k_lo = split * split_len
    k_hi = tl.minimum(K, k_lo + split_len)
    for k0 in range(k_lo, k_hi, BK):
        ks = k0 + tl.arange(0, BK)
        idx = tl.load(idx_ptr + b * sib + s * sis + ks * sik, mask=ks < k_hi, other=-1)  # [BK]
        valid = (idx >= 0) & (idx < N)
        kvt = tl.load(kv_ptr + b * skb + idx.to(tl.int64)[:, None] * skn + ds[None, :] * skd,
                      mask=valid[:, None] & dmask[None, :], other=0.0)  # [BK, BD] gathered entries
        logits = tl.dot(q, tl.trans(kvt), input_precision=PREC) * scale  # [BH, BK]
        logits = tl.where(valid[None, :], logits, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(logits - m_new[:, None])  # [BH, BK]
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(kvt.dtype), kvt, input_precision=PREC)
        m = m_new
    nonempty = l > 0.0
    out = acc / tl.where(nonempty, l, 1.0)[:, None]
    empty_lse = float("-inf") if PARTIAL else float("inf")
    lse = tl.where(nonempty, m + tl.log(tl.where(nonempty, l, 1.0)), empty_lse)
    split64 = split.to(tl.int64)
    tl.store(o_ptr + split64 * so_split + b * sob + s * sos + hs[:, None] * soh + ds[None, :] * sod,
             out.to(o_ptr.dtype.element_ty), mask=hmask[:, None] & dmask[None, :])
    tl.store(lse_ptr + split64 * sl_split + b * slb + s * sls + hs * slh, lse, mask=hmask)


@triton.jit
def sparse_mqa_combine_kernel(
    op_ptr, lp_ptr, o_ptr, lse_ptr, S, H, D, n_splits,
    sp_split, spb, sps, sph, spd, slp_split, slpb, slps, slph, sob, sos, soh, sod, slb, sls, slh,
    BH: tl.constexpr, BD: tl.constexpr,
):
    """Merge split partials: lse = logsumexp_c lse_c, out = sum_c exp(lse_c - lse) out_c; grid (B*S, H/BH).

    (The split-KV + LSE-combine scheme of ``shared/reference/attention.md`` §4.4.) Empty splits carry
    lse_c = -inf and weigh 0; a row empty in every split gets out 0 and lse +inf.
    """
    pid = tl.program_id(0)
    b = (pid // S).to(tl.int64)
    s = (pid % S).to(tl.int64)
    hs = tl.program_id(1) * BH + tl.arange(0, BH)
    hmask = hs < H
    ds = tl.arange(0, BD)
    omask = hmask[:, None] & (ds < D)[None, :]
    m = tl.full((BH,), -1.0e30, tl.float32)
    for c in range(n_splits):
        lc = tl.load(lp_ptr + c * slp_split + b * slpb + s * slps + hs * slph, mask=hmask, other=float("-inf"))
        m = tl.maximum(m, lc)
    total = tl.zeros((BH,), tl.float32)
    acc = tl.zeros((BH, BD), tl.float32)
    for c in range(n_splits):
        lc = tl.load(lp_ptr + c * slp_split + b * slpb + s * slps + hs * slph, mask=hmask, other=float("-inf"))
        w = tl.exp(lc - m)  # 0 for an empty split
        oc = tl.load(op_ptr + c * sp_split + b * spb + s * sps + hs[:, None] * sph + ds[None, :] * spd,
                     mask=omask, other=0.0)
        acc += w[:, None] * oc
        total += w
    nonempty = total > 0.0
    out = acc / tl.where(nonempty, total, 1.0)[:, None]
    lse = tl.where(nonempty, m + tl.log(tl.where(nonempty, total, 1.0)), float("inf"))
    tl.store(o_ptr + b * sob + s * sos + hs[:, None] * soh + ds[None, :] * sod, out.to(o_ptr.dtype.element_ty),
             mask=omask)
    tl.store(lse_ptr + b * slb + s * sls + hs * slh, lse, mask=hmask)


@triton.jit
def sparse_mqa_bwd_kernel(
    q_ptr, kv_ptr, idx_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dkv_ptr,
    S, H, N, K, D, scale,
    sqb, sqs, sqh, sqd, skb, skn, skd, sib, sis, sik, slb, sls, slh, sdkb, sdkn, sdkd,
    BH: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    """dq (stored) and dkv (fp32 atomics) for one query token and BH heads; grid (B*S, H/BH).

    q, do and dq share q's strides; lse and delta = sum_d(do * out) share lse's strides.
    p = exp(scale q.kv - lse); dlogit = p * (do.kv - delta);
    dq = scale * dlogit @ kv; dkv[idx] += scale * dlogitᵀ @ q + pᵀ @ do.
    """
    pid = tl.program_id(0)
    b = (pid // S).to(tl.int64)
    s = (pid % S).to(tl.int64)
    hs = tl.program_id(1) * BH + tl.arange(0, BH)
    hmask = hs < H
    ds = tl.arange(0, BD)
    dmask = ds < D
    qoff = b * sqb + s * sqs + hs[:, None] * sqh + ds[None, :] * sqd
    qmask = hmask[:, None] & dmask[None, :]
    q = tl.load(q_ptr + qoff, mask=qmask, other=0.0)  # [BH, BD]
    do = tl.load(do_ptr + qoff, mask=qmask, other=0.0)  # [BH, BD]
    loff = b * slb + s * sls + hs * slh
    lse = tl.load(lse_ptr + loff, mask=hmask, other=float("inf"))  # [BH]
    delta = tl.load(delta_ptr + loff, mask=hmask, other=0.0)  # [BH]
    dq = tl.zeros((BH, BD), tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        idx = tl.load(idx_ptr + b * sib + s * sis + ks * sik, mask=ks < K, other=-1)
        valid = (idx >= 0) & (idx < N)
        rows = idx.to(tl.int64)
        emask = valid[:, None] & dmask[None, :]
        kvt = tl.load(kv_ptr + b * skb + rows[:, None] * skn + ds[None, :] * skd, mask=emask, other=0.0)
        logits = tl.dot(q, tl.trans(kvt), input_precision=PREC) * scale  # [BH, BK]
        p = tl.where(valid[None, :], tl.exp(logits - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(kvt), input_precision=PREC)  # [BH, BK]
        dlogit = p * (dp - delta[:, None])
        dq += tl.dot(dlogit.to(kvt.dtype), kvt, input_precision=PREC)
        dkv = tl.dot(tl.trans(dlogit.to(q.dtype)), q, input_precision=PREC) * scale \
            + tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)  # [BK, BD]
        tl.atomic_add(dkv_ptr + b * sdkb + rows[:, None] * sdkn + ds[None, :] * sdkd, dkv, mask=emask)
    tl.store(dq_ptr + qoff, (dq * scale).to(dq_ptr.dtype.element_ty), mask=qmask)
