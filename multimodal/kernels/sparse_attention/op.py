"""Public sparse shared-KV MQA ``sparse_mqa``: attention over per-query selected KV entries.

Dispatch (``kernels/dispatch.py``): Triton on CUDA or under the interpreter, else
:func:`~multimodal.kernels.sparse_attention.naive.naive_sparse_mqa` (logged once).

In DeepSeek-V4 the backbone builds, for every query, an index list holding its sliding window (the
last ``window`` raw tokens) followed by the top-k compressed entries chosen by the indexer, as
positions into the concatenation [raw KV ; compressed KV] along N (``shared/reference/attention.md``
§4.5, FlashMLA's "extra" cache in one list). This op only sees that list.

Dtypes: q and kv meet in every ``tl.dot`` of both kernels (q·kvᵀ, p·kv, and in the backward do·kvᵀ,
dlogitᵀ·q, pᵀ·do with do in q's dtype), so they are cast to one dtype first (``dispatch.common_dtype``:
the autocast dtype when they disagree under autocast); the sink is read as fp32. The output comes back
in the caller's ``q.dtype``, as the reference's does. A kernel Triton cannot compile for a call's
dtypes falls back to the reference, forward or backward (``dispatch.run_or_fall_back``).
"""

from __future__ import annotations

import torch

from ..dispatch import (cast, cdiv, common_dtype, dot_precision, dtype_signature, next_power_of_2, reference_vjp,
                        run_or_fall_back, use_triton)
from .naive import naive_sparse_mqa

__all__ = ["sparse_mqa", "SparseMQAFunction"]


def _blocks(D: int, device: torch.device) -> tuple[int, int, int]:
    """(BH heads, BK entries, BD padded head dim) per program."""
    BD = max(16, next_power_of_2(D))
    if device.type != "cuda":
        return 16, 16, BD
    return 16, (32 if BD <= 256 else 16), BD


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (132 on an H100 / H200)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def _num_splits(programs: int, K: int, BK: int, device: torch.device) -> int:
    """Split the index list when (query, head-block) programs alone cannot fill the GPU (decode)."""
    if device.type != "cuda":
        return 1
    sms = _sm_count(device)
    if programs >= sms:
        return 1
    return max(1, min(cdiv(K, 4 * BK), cdiv(2 * sms, programs)))


class SparseMQAFunction(torch.autograd.Function):
    """Triton forward (online softmax with sink, optional split-K) and backward (dq, atomic dkv)."""

    @staticmethod
    def forward(ctx, q, kv, indices, scale, sink, num_splits=None):  # noqa: D102
        from .triton import sparse_mqa_combine_kernel, sparse_mqa_fwd_kernel

        B, S, H, D = q.shape
        N, K = kv.shape[1], indices.shape[2]
        q, kv, indices = q.contiguous(), kv.contiguous(), indices.contiguous()
        BH, BK, BD = _blocks(D, q.device)
        out = torch.empty_like(q)  # [B,S,H,D]
        lse = torch.empty(B, S, H, dtype=torch.float32, device=q.device)  # natural-log LSE incl. sink
        sink_arg = sink.float().contiguous() if sink is not None else lse
        n_hblk = cdiv(H, BH)
        splits = num_splits or _num_splits(B * S * n_hblk, K, BK, q.device)
        split_len = cdiv(cdiv(K, splits), BK) * BK  # whole BK blocks per split
        splits = cdiv(K, split_len)
        meta = dict(HAS_SINK=sink is not None, BH=BH, BK=BK, BD=BD, PREC=dot_precision(q.dtype),
                    num_warps=4 if BD <= 128 else 8)
        if splits == 1:
            sparse_mqa_fwd_kernel[(B * S, n_hblk, 1)](
                q, kv, indices, sink_arg, out, lse, S, H, N, K, D, float(scale), K,
                *q.stride(), *kv.stride(), *indices.stride(), *out.stride(), 0, *lse.stride(), 0,
                PARTIAL=False, **meta)
        else:
            o_part = torch.empty(splits, B, S, H, D, dtype=torch.float32, device=q.device)
            l_part = torch.empty(splits, B, S, H, dtype=torch.float32, device=q.device)
            sparse_mqa_fwd_kernel[(B * S, n_hblk, splits)](
                q, kv, indices, sink_arg, o_part, l_part, S, H, N, K, D, float(scale), split_len,
                *q.stride(), *kv.stride(), *indices.stride(), *o_part.stride()[1:], o_part.stride(0),
                *l_part.stride()[1:], l_part.stride(0), PARTIAL=True, **meta)
            sparse_mqa_combine_kernel[(B * S, n_hblk)](
                o_part, l_part, out, lse, S, H, D, splits, *o_part.stride(), *l_part.stride(),
                *out.stride(), *lse.stride(), BH=BH, BD=BD, num_warps=meta["num_warps"])
        ctx.save_for_backward(q, kv, indices, out, lse, sink if sink is not None else lse)
        ctx.has_sink = sink is not None
        ctx.scale = float(scale)
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        q, kv, indices, _, _, sink = ctx.saved_tensors
        sink = sink if ctx.has_sink else None
        need = ctx.needs_input_grad

        def reference():
            fn = lambda q_, kv_, sink_: naive_sparse_mqa(q_, kv_, indices, ctx.scale, sink_)  # noqa: E731
            dq, dkv, dsink = reference_vjp(fn, (q, kv, sink), (need[0], need[1], need[4]), (dout,))
            return dq, dkv, None, None, dsink, None

        return run_or_fall_back("sparse_mqa.backward", dtype_signature(q, kv, sink, dout),
                                lambda: SparseMQAFunction._backward(ctx, dout), reference)

    @staticmethod
    def _backward(ctx, dout):
        """The Triton backward: dq [B,S,H,D] in q's dtype, dkv [B,N,D] in kv's, dsink [H] in the sink's."""
        from .triton import sparse_mqa_bwd_kernel

        q, kv, indices, out, lse, sink = ctx.saved_tensors
        B, S, H, D = q.shape
        N, K = kv.shape[1], indices.shape[2]
        BH, BK, BD = _blocks(D, q.device)
        dout = dout.to(q.dtype).contiguous()
        delta = (dout.float() * out.float()).sum(-1)  # [B,S,H] = sum_j p_j dp_j (sink value is 0)
        dq = torch.empty_like(q)
        dkv = torch.zeros(B, N, D, dtype=torch.float32, device=q.device)  # atomics accumulate in fp32
        grid = (B * S, cdiv(H, BH))
        sparse_mqa_bwd_kernel[grid](
            q, kv, indices, dout, lse, delta, dq, dkv, S, H, N, K, D, ctx.scale,
            *q.stride(), *kv.stride(), *indices.stride(), *lse.stride(), *dkv.stride(),
            BH=BH, BK=BK, BD=BD, PREC=dot_precision(q.dtype), num_warps=4 if BD <= 128 else 8,
        )
        dsink = None
        if ctx.has_sink and ctx.needs_input_grad[4]:
            # d lse / d sink = p_sink = exp(sink - lse); d out / d sink = -p_sink * out
            p_sink = torch.exp(sink.float().view(1, 1, H) - lse)  # [B,S,H]
            dsink = -(p_sink * delta).sum(dim=(0, 1)).to(sink.dtype)
        return dq, dkv.to(kv.dtype), None, None, dsink, None


def sparse_mqa(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    scale: float,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """Shared-KV multi-query attention over selected entries.

    Args:
        q: [B, S, H, D] queries (D may be 512; no power-of-two requirement).
        kv: [B, N, D] entries, used as key and as value.
        indices: [B, S, K] int64 positions in N; -1 (or any position outside [0, N)) is ignored.
        scale: softmax scale (pass it explicitly; attention.md §1.6 warns about default scales).
        sink: optional [H] fp32 attention-sink logit per head (extra softmax column, value 0).

    Returns:
        [B, S, H, D] in ``q.dtype``; rows without a valid entry are 0. Gradients for q, kv, sink.
    """
    if q.dim() != 4 or kv.dim() != 3 or indices.dim() != 3:
        raise ValueError(f"sparse_mqa: expected q [B,S,H,D], kv [B,N,D], indices [B,S,K]; got "
                         f"{tuple(q.shape)}, {tuple(kv.shape)}, {tuple(indices.shape)}")
    B, S, H, D = q.shape
    if kv.shape[0] != B or kv.shape[2] != D or indices.shape[:2] != (B, S):
        raise ValueError(f"sparse_mqa: shapes disagree: q {tuple(q.shape)}, kv {tuple(kv.shape)}, "
                         f"indices {tuple(indices.shape)}")
    if sink is not None and sink.shape != (H,):
        raise ValueError(f"sparse_mqa: sink must be [H]=[{H}], got {tuple(sink.shape)}")
    if q.numel() == 0 or indices.shape[2] == 0 or not use_triton("sparse_mqa", q):
        return naive_sparse_mqa(q, kv, indices, scale, sink)

    def kernel() -> torch.Tensor:
        qc, kvc = cast(common_dtype(q, kv), q, kv)  # q [B,S,H,D], kv [B,N,D]: one dtype for the dots
        out = SparseMQAFunction.apply(qc, kvc, indices.long(), scale, sink)  # [B,S,H,D] in qc's dtype
        return out.to(q.dtype)  # the reference's output dtype

    return run_or_fall_back("sparse_mqa", dtype_signature(q, kv, sink), kernel,
                            lambda: naive_sparse_mqa(q, kv, indices, scale, sink))
