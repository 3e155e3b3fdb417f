"""Triton kernels for the routed-expert SwiGLU FFN (forward and backward). Kernels only.

Layout (built by ``op.py``): the T·k (token, slot) pairs are stable-sorted by expert, so expert e owns
the contiguous "sorted rows" ``[seg_start[e], seg_end[e])``. Row r belongs to token ``token[r]``.
Each M-block of ``BM`` sorted rows lies inside one expert's segment; ``blk_expert[b]`` and
``blk_row[b]`` describe block b, and ``blk_expert[b] == E`` marks a spare program of the
over-sized grid (the grid size is a host-side upper bound, so no per-expert count ever travels to
the host). Only indices are padded, never the activations (the ScatterMoE idea, summarised in
``shared/reference/performance.md`` §2, "MoE"): the token gather is fused into the first GEMM's
prologue, the SwiGLU (with V4's clamp) into its epilogue, and the routing weight into the second
GEMM's epilogue.

All GEMMs accumulate in fp32. ``PREC`` is ``tl.dot``'s input precision (see ``dispatch.dot_precision``), or
``"f32_upcast"``: both operands are widened to fp32 first (exact for bf16 inputs: a product of two bf16
numbers fits in fp32). ``op.py`` asks for it only under the CPU interpreter with bf16 operands, whose ``tl.dot``
multiplies the raw uint16 storage of bf16 (Triton 3.8's interpreter converts fp8 before ``np.matmul``, not
bf16); a GPU never compiles that branch.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["moe_up_kernel", "grouped_gemm_kernel", "moe_down_bwd_kernel", "grouped_wgrad_kernel"]


@triton.jit
def _dot(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b with fp32 accumulation; ``PREC == "f32_upcast"`` widens both operands first (module docstring)."""
    if PREC == "f32_upcast":
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=PREC)
    return acc


@triton.jit
def moe_up_kernel(
    x_ptr, w1_ptr, w3_ptr, g_ptr, u_ptr, h_ptr,
    token_ptr, blk_expert_ptr, blk_row_ptr, seg_end_ptr,
    E, H, I, limit,
    sx0, sx1, sw0, sw1, sw2, sh0, sh1,
    HAS_LIMIT: tl.constexpr, SAVE_GU: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):
    """h[r, n] = silu(clamp(x[token[r]] . w1[e, n])) * clamp(x[token[r]] . w3[e, n]); grid (blocks, I/BN).

    Also stores the pre-activations g, u (for the backward) when SAVE_GU.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(blk_expert_ptr + pid_m)
    if e < E:
        e64 = e.to(tl.int64)
        row0 = tl.load(blk_row_ptr + pid_m)
        end = tl.load(seg_end_ptr + e)
        rows = row0 + tl.arange(0, BM)  # [BM] sorted rows of this block
        rmask = rows < end
        tok = tl.load(token_ptr + rows, mask=rmask, other=0).to(tl.int64)
        cols = pid_n * BN + tl.arange(0, BN)  # [BN] columns of the expert width I
        cmask = cols < I
        acc_g = tl.zeros((BM, BN), dtype=tl.float32)
        acc_u = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, H, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < H
            a = tl.load(x_ptr + tok[:, None] * sx0 + ks[None, :] * sx1,
                        mask=rmask[:, None] & kmask[None, :], other=0.0)  # [BM, BK] gathered tokens
            woff = e64 * sw0 + cols[None, :] * sw1 + ks[:, None] * sw2  # [BK, BN] = w[e]^T tile
            wmask = kmask[:, None] & cmask[None, :]
            b1 = tl.load(w1_ptr + woff, mask=wmask, other=0.0)
            b3 = tl.load(w3_ptr + woff, mask=wmask, other=0.0)
            acc_g = _dot(a, b1, acc_g, PREC)
            acc_u = _dot(a, b3, acc_u, PREC)
        omask = rmask[:, None] & cmask[None, :]
        ooff = rows[:, None].to(tl.int64) * sh0 + cols[None, :] * sh1
        if SAVE_GU:
            tl.store(g_ptr + ooff, acc_g.to(g_ptr.dtype.element_ty), mask=omask)
            tl.store(u_ptr + ooff, acc_u.to(u_ptr.dtype.element_ty), mask=omask)
        if HAS_LIMIT:
            acc_g = tl.minimum(acc_g, limit)
            acc_u = tl.minimum(tl.maximum(acc_u, -limit), limit)
        h = acc_g * tl.sigmoid(acc_g) * acc_u
        tl.store(h_ptr + ooff, h.to(h_ptr.dtype.element_ty), mask=omask)


@triton.jit
def grouped_gemm_kernel(
    a_ptr, b_ptr, c_ptr, a_idx_ptr, c_idx_ptr, scale_ptr,
    blk_expert_ptr, blk_row_ptr, seg_end_ptr,
    E, N, K,
    sa0, sa1, sb0, sbn, sbk, sc0, sc1,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, HAS_SCALE: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):
    """c[ci(r), n] (+)= scale[r] * sum_k a[ai(r), k] * b[e, n, k] over the sorted rows r of expert e.

    ai = a_idx[r] when GATHER_A else r; ci = c_idx[r] when SCATTER_C else r. ``b`` is addressed by
    strides (sb0 expert, sbn output column, sbk reduction), so any weight transpose is free.
    Grid (blocks, N/BN).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(blk_expert_ptr + pid_m)
    if e < E:
        e64 = e.to(tl.int64)
        row0 = tl.load(blk_row_ptr + pid_m)
        end = tl.load(seg_end_ptr + e)
        rows = row0 + tl.arange(0, BM)
        rmask = rows < end
        if GATHER_A:
            arow = tl.load(a_idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        else:
            arow = rows.to(tl.int64)
        cols = pid_n * BN + tl.arange(0, BN)
        cmask = cols < N
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < K
            a = tl.load(a_ptr + arow[:, None] * sa0 + ks[None, :] * sa1,
                        mask=rmask[:, None] & kmask[None, :], other=0.0)  # [BM, BK]
            b = tl.load(b_ptr + e64 * sb0 + cols[None, :] * sbn + ks[:, None] * sbk,
                        mask=kmask[:, None] & cmask[None, :], other=0.0)  # [BK, BN]
            acc = _dot(a, b, acc, PREC)
        if HAS_SCALE:
            acc = acc * tl.load(scale_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[:, None]
        if SCATTER_C:
            crow = tl.load(c_idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        else:
            crow = rows.to(tl.int64)
        coff = crow[:, None] * sc0 + cols[None, :] * sc1
        omask = rmask[:, None] & cmask[None, :]
        if ACCUMULATE:
            acc += tl.load(c_ptr + coff, mask=omask, other=0.0).to(tl.float32)
        tl.store(c_ptr + coff, acc.to(c_ptr.dtype.element_ty), mask=omask)


@triton.jit
def moe_down_bwd_kernel(
    dout_ptr, w2_ptr, g_ptr, u_ptr, wsort_ptr, dg_ptr, du_ptr, dwpart_ptr,
    token_ptr, blk_expert_ptr, blk_row_ptr, seg_end_ptr,
    E, H, I, R, limit,
    sd0, sd1, sw0, sw1, sw2, sg0, sg1,
    HAS_LIMIT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):
    """Backward of the down projection and the SwiGLU, for sorted rows r of expert e; grid (blocks, I/BN).

    dh0[r, n] = dout[token[r]] . w2[e, :, n]                    (unweighted grad of h)
    dwpart[pid_n, r] = sum_n dh0 * h                            (routing-weight grad, partial over n)
    dh = wsort[r] * dh0;  dg = dh * u_c * silu'(g_c) * [g <= L];  du = dh * silu(g_c) * [|u| <= L]
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(blk_expert_ptr + pid_m)
    if e < E:
        e64 = e.to(tl.int64)
        row0 = tl.load(blk_row_ptr + pid_m)
        end = tl.load(seg_end_ptr + e)
        rows = row0 + tl.arange(0, BM)
        rmask = rows < end
        tok = tl.load(token_ptr + rows, mask=rmask, other=0).to(tl.int64)
        cols = pid_n * BN + tl.arange(0, BN)
        cmask = cols < I
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, H, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < H
            a = tl.load(dout_ptr + tok[:, None] * sd0 + ks[None, :] * sd1,
                        mask=rmask[:, None] & kmask[None, :], other=0.0)  # [BM, BK]
            b = tl.load(w2_ptr + e64 * sw0 + ks[:, None] * sw1 + cols[None, :] * sw2,
                        mask=kmask[:, None] & cmask[None, :], other=0.0)  # [BK, BN] = w2[e] tile
            acc = _dot(a, b, acc, PREC)
        omask = rmask[:, None] & cmask[None, :]
        off = rows[:, None].to(tl.int64) * sg0 + cols[None, :] * sg1
        g = tl.load(g_ptr + off, mask=omask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + off, mask=omask, other=0.0).to(tl.float32)
        if HAS_LIMIT:
            gc = tl.minimum(g, limit)
            uc = tl.minimum(tl.maximum(u, -limit), limit)
            g_pass = (g <= limit).to(tl.float32)
            u_pass = ((u >= -limit) & (u <= limit)).to(tl.float32)
        else:
            gc = g
            uc = u
            g_pass = 1.0
            u_pass = 1.0
        sig = tl.sigmoid(gc)
        silu = gc * sig
        h = silu * uc
        dw = tl.sum(tl.where(omask, acc * h, 0.0), axis=1)  # [BM]
        tl.store(dwpart_ptr + pid_n.to(tl.int64) * R + rows, dw, mask=rmask)
        dh = acc * tl.load(wsort_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[:, None]
        dg = dh * uc * sig * (1.0 + gc * (1.0 - sig)) * g_pass
        du = dh * silu * u_pass
        tl.store(dg_ptr + off, dg.to(dg_ptr.dtype.element_ty), mask=omask)
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=omask)


@triton.jit
def grouped_wgrad_kernel(
    a_ptr, b_ptr, c_ptr, a_idx_ptr, scale_ptr, seg_start_ptr, seg_end_ptr,
    N, K,
    sa0, sa1, sb0, sb1, sc0, sc1, sc2,
    GATHER_A: tl.constexpr, HAS_SCALE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):
    """Weight gradient c[e, n, k] = sum_{r in segment e} scale[r] * a[ai(r), n] * b[r, k]; grid (E, N/BN, K/BK).

    ai = a_idx[r] when GATHER_A else r. An expert with no rows gets an exact zero gradient.
    """
    e = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    start = tl.load(seg_start_ptr + e)
    end = tl.load(seg_end_ptr + e)
    cols_n = pid_n * BN + tl.arange(0, BN)
    cols_k = pid_k * BK + tl.arange(0, BK)
    nmask = cols_n < N
    kmask = cols_k < K
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    for r0 in range(start, end, BM):
        rows = r0 + tl.arange(0, BM)
        rmask = rows < end
        if GATHER_A:
            arow = tl.load(a_idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        else:
            arow = rows.to(tl.int64)
        a = tl.load(a_ptr + arow[:, None] * sa0 + cols_n[None, :] * sa1,
                    mask=rmask[:, None] & nmask[None, :], other=0.0)  # [BM, BN]
        if HAS_SCALE:
            s = tl.load(scale_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
            a = (a.to(tl.float32) * s[:, None]).to(a_ptr.dtype.element_ty)
        b = tl.load(b_ptr + rows[:, None].to(tl.int64) * sb0 + cols_k[None, :] * sb1,
                    mask=rmask[:, None] & kmask[None, :], other=0.0)  # [BM, BK]
        acc = _dot(tl.trans(a), b, acc, PREC)
    off = e.to(tl.int64) * sc0 + cols_n[:, None] * sc1 + cols_k[None, :] * sc2
    tl.store(c_ptr + off, acc.to(c_ptr.dtype.element_ty), mask=nmask[:, None] & kmask[None, :])
