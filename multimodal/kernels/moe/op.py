"""Public routed-expert FFN ``moe_ffn``: sort tokens by expert, grouped GEMMs, weighted scatter back.

Dispatch (``kernels/dispatch.py``): a fast path on CUDA or under the Triton interpreter, else
:func:`~multimodal.kernels.moe.naive.naive_moe_ffn` (logged once). There are two fast paths, and which one runs
is measured, not configured (``choice.py``): the Triton kernels below, or ``torch._grouped_mm``
(``grouped.py``). ``MULTIMODAL_KERNELS=auto`` (default) takes the faster on the device at hand, timed once per
(device, dtype, power-of-two token bucket, H, I, E, k, training) on CUDA and then read from a table; where
``torch._grouped_mm`` cannot run well (not bf16 on sm90/sm100, strides not 16-byte aligned, an old torch) and
on the CPU interpreter it is Triton. ``MULTIMODAL_KERNELS=triton`` always runs the Triton kernels,
``MULTIMODAL_KERNELS=torch`` the reference.

Dtypes: x and the three expert weights meet in every GEMM, so both fast paths get them in one compute dtype
(:func:`compute_dtype`): under ``torch.autocast`` enabled for x's device type, the autocast dtype (what autocast
gives a matmul, also when every input is fp32), else ``torch.promote_types`` over them (bf16 activations with
fp32 weights outside autocast compute in fp32). The cast is a differentiable ``.to`` outside the
``autograd.Function``, so gradients reach the parameters in their own dtypes. Routing weights keep theirs (the
kernels read them as fp32). The output is in ``x.dtype``, as the reference's is. A Triton kernel that cannot be
compiled for a call's dtypes falls back to the reference, forward or backward (``dispatch.run_or_fall_back``).

Triton pipeline (``shared/reference/performance.md`` §2, "MoE: sorted grouped GEMM"):

1. route: stable-sort the T·k (token, slot) pairs by expert; per-expert segment bounds and the
   M-block map are computed on the device (scatter_add / cumsum / searchsorted), so the forward
   never copies per-expert counts to the host; the grid is a host-side upper bound on the blocks;
2. ``moe_up_kernel``: gather x rows, gate and up GEMMs, clamped SwiGLU epilogue -> h [T·k, I];
3. ``grouped_gemm_kernel``: down GEMM, routing weight in the epilogue, scatter to slot order;
4. sum the k slots of each token.

The backward (custom ``autograd.Function``) reuses the same sorted layout: the down-projection and
SwiGLU backward in one kernel (which also yields the routing-weight gradient), two grouped GEMMs for
dx, and three segment-reduction kernels for dw1, dw3, dw2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..dispatch import (cast, cdiv, common_dtype, dot_precision, dtype_signature, kernel_policy, reference_vjp,
                        run_or_fall_back, use_triton)
from .choice import CHOICES, Candidate, choice_key
from .grouped import grouped_mm_moe_ffn, grouped_mm_unsupported
from .naive import expert_counts, naive_moe_ffn

__all__ = ["moe_ffn", "MoEFFNFunction", "choose_path", "compute_dtype"]

logger = logging.getLogger("multimodal.kernels")
_logged: set[str] = set()

#: (BM, BN, BK, PREC): M/N/K tiles and the ``tl.dot`` input precision of one launch
Blocks = tuple[int, int, int, str]


@dataclass
class _Routing:
    """Sorted layout of the T·k routed rows (all tensors on the device, int64)."""

    order: torch.Tensor  # [R] flat slot (t*k + j) of sorted row r
    token: torch.Tensor  # [R] token of sorted row r
    seg_start: torch.Tensor  # [E] first sorted row of each expert
    seg_end: torch.Tensor  # [E] one past the last sorted row of each expert
    blk_expert: torch.Tensor  # [G] expert of M-block b, E for a spare program
    blk_row: torch.Tensor  # [G] first sorted row of M-block b


def _block_config(dtype: torch.dtype, device: torch.device) -> Blocks:
    """(BM, BN, BK, PREC): small tiles for the CPU interpreter, tensor-core tiles on a GPU; ``tl.dot`` precision.

    PREC is :func:`~multimodal.kernels.dispatch.dot_precision`, except for bf16 under the CPU interpreter, whose
    ``tl.dot`` cannot multiply bf16: ``"f32_upcast"`` there (``triton.py`` docstring).
    """
    if device.type != "cuda":
        return 16, 16, 16, "f32_upcast" if dtype == torch.bfloat16 else dot_precision(dtype)
    BM, BN, BK = (64, 128, 64) if dtype != torch.float32 else (64, 64, 32)
    return BM, BN, BK, dot_precision(dtype)


def _route(indices: torch.Tensor, E: int, BM: int) -> _Routing:
    """Sort slots by expert and build the M-block map without a host synchronisation."""
    T, k = indices.shape
    R = T * k
    flat = indices.reshape(-1)  # [R]
    _, order = torch.sort(flat, stable=True)  # [R]
    counts = expert_counts(flat, E)  # [E] int64 (bincount would sync on its max)
    seg_end = torch.cumsum(counts, 0)
    seg_start = seg_end - counts
    nblk = (counts + BM - 1) // BM  # [E] M-blocks per expert
    blk_end = torch.cumsum(nblk, 0)
    G = max(1, min(cdiv(R, BM) + E, R))  # upper bound on sum(nblk), known on the host
    g = torch.arange(G, device=flat.device)
    blk_expert = torch.searchsorted(blk_end, g, right=True)  # [G], == E past the last block
    e = blk_expert.clamp(max=E - 1)
    blk_row = seg_start[e] + (g - (blk_end[e] - nblk[e])) * BM
    return _Routing(order, order // k, seg_start, seg_end, blk_expert, blk_row)


def _grouped_gemm(
    a: torch.Tensor, b_strides: tuple[int, int, int], b: torch.Tensor, c: torch.Tensor, rt: _Routing, *,
    N: int, K: int, a_idx: torch.Tensor | None = None, c_idx: torch.Tensor | None = None,
    scale: torch.Tensor | None = None, accumulate: bool = False, blocks: Blocks,
) -> None:
    """Launch ``grouped_gemm_kernel``: c[ci(r)] (+)= scale[r] * a[ai(r)] @ b[e]^T (b given by strides)."""
    from .triton import grouped_gemm_kernel

    BM, BN, BK, PREC = blocks
    G = rt.blk_expert.numel()
    grid = (G, cdiv(N, BN))
    grouped_gemm_kernel[grid](
        a, b, c, a_idx if a_idx is not None else rt.order, c_idx if c_idx is not None else rt.order,
        scale if scale is not None else a, rt.blk_expert, rt.blk_row, rt.seg_end,
        b.shape[0], N, K, a.stride(0), a.stride(1), *b_strides, c.stride(0), c.stride(1),
        GATHER_A=a_idx is not None, SCATTER_C=c_idx is not None, HAS_SCALE=scale is not None,
        ACCUMULATE=accumulate, BM=BM, BN=BN, BK=BK, PREC=PREC,
    )


def _wgrad(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, rt: _Routing, *,
    a_idx: torch.Tensor | None = None, scale: torch.Tensor | None = None, blocks: Blocks,
) -> None:
    """Launch ``grouped_wgrad_kernel``: out[e] = sum_{r in e} (scale[r] a[ai(r)])^T b[r]."""
    from .triton import grouped_wgrad_kernel

    BM, BN, BK, PREC = blocks
    E, N, K = out.shape
    grid = (E, cdiv(N, BN), cdiv(K, BK))
    grouped_wgrad_kernel[grid](
        a, b, out, a_idx if a_idx is not None else rt.order, scale if scale is not None else a,
        rt.seg_start, rt.seg_end, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        *out.stride(), GATHER_A=a_idx is not None, HAS_SCALE=scale is not None,
        BM=BM, BN=BN, BK=BK, PREC=PREC,
    )


class MoEFFNFunction(torch.autograd.Function):
    """Triton routed-expert FFN with a fused backward; see the module docstring for the pipeline."""

    @staticmethod
    def forward(ctx, x, w1, w3, w2, indices, weights, swiglu_limit, grad_enabled=True):  # noqa: D102
        from .triton import moe_up_kernel

        T, H = x.shape
        E, I, _ = w1.shape
        k = indices.shape[1]
        blocks = _block_config(x.dtype, x.device)
        BM, BN, BK, PREC = blocks
        x, w1, w3, w2 = x.contiguous(), w1.contiguous(), w3.contiguous(), w2.contiguous()
        rt = _route(indices, E, BM)
        wsort = weights.reshape(-1)[rt.order].float()  # [R] routing weight of sorted row r
        R = T * k
        # needs_input_grad stays True under torch.no_grad(), hence the caller's grad_enabled flag
        save = grad_enabled and (ctx.needs_input_grad[0] or any(ctx.needs_input_grad[1:4]) or ctx.needs_input_grad[5])
        h = torch.empty(R, I, dtype=x.dtype, device=x.device)  # [R, I] SwiGLU output, sorted rows
        g = torch.empty_like(h) if save else h
        u = torch.empty_like(h) if save else h
        limit = float(swiglu_limit) if swiglu_limit is not None else 0.0
        G = rt.blk_expert.numel()
        moe_up_kernel[(G, cdiv(I, BN))](
            x, w1, w3, g, u, h, rt.token, rt.blk_expert, rt.blk_row, rt.seg_end,
            E, H, I, limit, x.stride(0), x.stride(1), *w1.stride(), h.stride(0), h.stride(1),
            HAS_LIMIT=swiglu_limit is not None, SAVE_GU=save,
            BM=BM, BN=BN, BK=BK, PREC=PREC,
            num_warps=8 if x.is_cuda else 4,  # two [BM, BN] fp32 accumulators
        )
        y = torch.empty(R, H, dtype=x.dtype, device=x.device)  # [R, H] weighted expert outputs, slot order
        # down: b[e, n=h, k=i] = w2[e, h, i]
        _grouped_gemm(h, w2.stride(), w2, y, rt, N=H, K=I, c_idx=rt.order, scale=wsort, blocks=blocks)
        out = torch.sum(y.view(T, k, H), dim=1, dtype=torch.float32).to(x.dtype)  # [T, H]
        if save:
            ctx.save_for_backward(x, w1, w3, w2, weights, g, u, h, wsort, rt.order, rt.token,
                                  rt.seg_start, rt.seg_end, rt.blk_expert, rt.blk_row, indices)
        ctx.swiglu_limit = swiglu_limit
        ctx.k = k
        return out

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        x, w1, w3, w2, weights = ctx.saved_tensors[:5]
        indices = ctx.saved_tensors[-1]
        need = ctx.needs_input_grad

        def reference():
            def fn(x_, w1_, w3_, w2_, wt_):
                return naive_moe_ffn(x_, w1_, w3_, w2_, indices, wt_, ctx.swiglu_limit)
            dx, dw1, dw3, dw2, dwt = reference_vjp(fn, (x, w1, w3, w2, weights),
                                                   (need[0], need[1], need[2], need[3], need[5]), (dout,))
            return dx, dw1, dw3, dw2, None, dwt, None, None

        return run_or_fall_back("moe_ffn.backward", dtype_signature(x, w1, w3, w2, weights, dout),
                                lambda: MoEFFNFunction._backward(ctx, dout), reference)

    @staticmethod
    def _backward(ctx, dout):
        """The Triton backward: dx, dw1, dw3, dw2 in the operands' (one) dtype, dweights in the weights'."""
        from .triton import moe_down_bwd_kernel

        (x, w1, w3, w2, weights, g, u, h, wsort, order, token,
         seg_start, seg_end, blk_expert, blk_row, _) = ctx.saved_tensors
        rt = _Routing(order, token, seg_start, seg_end, blk_expert, blk_row)
        T, H = x.shape
        E, I, _ = w1.shape
        k = ctx.k
        R = T * k
        blocks = _block_config(x.dtype, x.device)
        BM, BN, BK, PREC = blocks
        dout = dout.contiguous().to(x.dtype)
        limit = float(ctx.swiglu_limit) if ctx.swiglu_limit is not None else 0.0
        dg = torch.empty_like(g)  # [R, I]
        du = torch.empty_like(u)  # [R, I]
        n_blk = cdiv(I, BN)
        dwpart = torch.empty(n_blk, R, dtype=torch.float32, device=x.device)  # partial weight grads
        moe_down_bwd_kernel[(blk_expert.numel(), n_blk)](
            dout, w2, g, u, wsort, dg, du, dwpart, token, blk_expert, blk_row, seg_end,
            E, H, I, R, limit, dout.stride(0), dout.stride(1), *w2.stride(), g.stride(0), g.stride(1),
            HAS_LIMIT=ctx.swiglu_limit is not None, BM=BM, BN=BN, BK=BK, PREC=PREC,
        )
        dweights = None
        if ctx.needs_input_grad[5]:
            dw_flat = torch.zeros(R, dtype=torch.float32, device=x.device)
            dw_flat[order] = dwpart.sum(0)  # back from sorted rows to slot order
            dweights = dw_flat.view(T, k).to(weights.dtype)
        dx = None
        if ctx.needs_input_grad[0]:
            dxs = torch.empty(R, H, dtype=x.dtype, device=x.device)  # [R, H] per-slot dx, slot order
            # b[e, n=h, k=i] = w1[e, i, h]
            _grouped_gemm(dg, (w1.stride(0), w1.stride(2), w1.stride(1)), w1, dxs, rt, N=H, K=I,
                          c_idx=order, blocks=blocks)
            _grouped_gemm(du, (w3.stride(0), w3.stride(2), w3.stride(1)), w3, dxs, rt, N=H, K=I,
                          c_idx=order, accumulate=True, blocks=blocks)
            dx = torch.sum(dxs.view(T, k, H), dim=1, dtype=torch.float32).to(x.dtype)
        dw1 = dw3 = dw2 = None
        if ctx.needs_input_grad[1]:
            dw1 = torch.empty_like(w1)  # [E, I, H] = sum_r dg[r]^T x[token[r]]
            _wgrad_x(dg, x, dw1, rt, blocks)
        if ctx.needs_input_grad[2]:
            dw3 = torch.empty_like(w3)
            _wgrad_x(du, x, dw3, rt, blocks)
        if ctx.needs_input_grad[3]:
            dw2 = torch.empty_like(w2)  # [E, H, I] = sum_r (w_r dout[token[r]])^T h[r]
            _wgrad(dout, h, dw2, rt, a_idx=token, scale=wsort, blocks=blocks)
        return dx, dw1, dw3, dw2, None, dweights, None, None


def _wgrad_x(dact: torch.Tensor, x: torch.Tensor, out: torch.Tensor, rt: _Routing, blocks: Blocks) -> None:
    """out[e, i, h] = sum_{r in e} dact[r, i] x[token[r], h]: gather x rows as the right operand."""
    # The kernel gathers its left operand; transpose the problem: out[e]^T = x[tok]^T dact, so
    # compute into a [E, H, I] view of ``out`` with the gathered x on the left.
    _wgrad(x, dact, out.transpose(1, 2), rt, a_idx=rt.token, blocks=blocks)


def compute_dtype(x: torch.Tensor, *weights: torch.Tensor) -> torch.dtype:
    """The one dtype in which x and the expert weights meet in the GEMMs (module docstring, "Dtypes").

    Under ``torch.autocast`` enabled for x's device type: the autocast dtype, as autocast would cast a matmul's
    inputs, also when they all agree (unlike :func:`~multimodal.kernels.dispatch.common_dtype`, which keeps agreeing
    operands). Otherwise ``common_dtype``: the promoted dtype of x and the weights (nothing loses precision).
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return common_dtype(x, *weights)


def choose_path(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, indices: torch.Tensor,
                weights: torch.Tensor, swiglu_limit: float | None) -> str:
    """``"triton"`` or ``"grouped_mm"`` for one call whose x and expert weights are already in one dtype.

    ``MULTIMODAL_KERNELS=triton``: always Triton. ``auto``: the stored choice for this call's key
    (:func:`~multimodal.kernels.moe.choice.choice_key`); without one, Triton where nothing is measured (the CPU)
    or where ``torch._grouped_mm`` is not an option (:func:`~multimodal.kernels.moe.grouped.grouped_mm_unsupported`,
    said once at DEBUG); else both paths are timed on these operands now and the winner is stored
    (:data:`~multimodal.kernels.moe.choice.CHOICES`). After the first call per key this reads shapes, dtypes,
    flags and data pointers only: no device work, no host synchronisation.
    """
    if kernel_policy() == "triton":
        return "triton"
    T, H = x.shape
    E, I, _ = w1.shape  # noqa: E741
    k = indices.shape[1]
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, w3, w2, weights))
    key = choice_key(x.device, x.dtype, T, H, I, E, k, training)
    stored = CHOICES.lookup(key)
    if stored is not None:
        return stored
    if x.device.type not in CHOICES.device_types:
        return "triton"
    reason = grouped_mm_unsupported(x, w1, w3, w2, k)
    if reason is not None:
        if reason not in _logged:
            _logged.add(reason)
            logger.debug("multimodal.kernels.moe_ffn: Triton runs; the torch._grouped_mm path is not an option (%s)",
                         reason)
        return "triton"
    return CHOICES.choose(key, x.device, lambda: _candidates(x, w1, w3, w2, indices, weights, swiglu_limit, training))


def _candidates(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, indices: torch.Tensor,
                weights: torch.Tensor, swiglu_limit: float | None, training: bool) -> dict[str, Candidate]:
    """Both paths as zero-argument calls on detached copies of this call's operands (Triton first: the default).

    Training calls run forward + backward (gradients for the operands that need them, with the first forward
    output as the incoming gradient: the right shape and scale, and no draw from the RNG); others the forward.
    """
    leaves = [t.detach().requires_grad_(training and t.requires_grad) for t in (x, w1, w3, w2, weights)]
    lx, lw1, lw3, lw2, lwt = leaves
    wrt = [t for t in leaves if t.requires_grad]
    dout: list[torch.Tensor] = []

    def with_backward(forward):
        def run() -> torch.Tensor:
            out = forward()
            if wrt:
                if not dout:
                    dout.append(out.detach())
                torch.autograd.grad(out, wrt, dout[0])
            return out
        return run

    return {
        "triton": with_backward(lambda: MoEFFNFunction.apply(lx, lw1, lw3, lw2, indices, lwt, swiglu_limit,
                                                             bool(wrt))),
        "grouped_mm": with_backward(lambda: grouped_mm_moe_ffn(lx, lw1, lw3, lw2, indices, lwt, swiglu_limit)),
    }


def moe_ffn(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    swiglu_limit: float | None = None,
) -> torch.Tensor:
    """Routed experts: out[t] = sum_j weights[t, j] * w2[e] @ (silu(g) * u), e = indices[t, j].

    Args:
        x: [T, H] token activations.
        w1: [E, I, H] gate weights; w3: [E, I, H] up weights; w2: [E, H, I] down weights.
        indices: [T, k] int64 expert ids in [0, E).
        weights: [T, k] routing weights (differentiable).
        swiglu_limit: optional L: gate clamped to max=L, up to [-L, L] (DeepSeek-V4).

    Returns:
        [T, H] in ``x.dtype``. Gradients flow to x, w1, w3, w2 and weights, each in its own dtype. The GEMMs run
        in :func:`compute_dtype` (the autocast dtype under autocast), on :func:`choose_path`'s path.
    """
    if x.dim() != 2 or indices.dim() != 2 or indices.shape != weights.shape or indices.shape[0] != x.shape[0]:
        raise ValueError(f"moe_ffn: expected x [T,H], indices/weights [T,k]; got x {tuple(x.shape)}, "
                         f"indices {tuple(indices.shape)}, weights {tuple(weights.shape)}")
    E, I, H = w1.shape
    if w3.shape != w1.shape or w2.shape != (E, H, I) or x.shape[1] != H:
        raise ValueError(f"moe_ffn: w1/w3 must be [E,I,H] and w2 [E,H,I] with H={x.shape[1]}; got "
                         f"{tuple(w1.shape)}, {tuple(w3.shape)}, {tuple(w2.shape)}")
    if x.shape[0] == 0 or not use_triton("moe_ffn", x):
        return naive_moe_ffn(x, w1, w3, w2, indices, weights, swiglu_limit)
    dtype = compute_dtype(x, w1, w3, w2)

    def kernel() -> torch.Tensor:
        xc, w1c, w3c, w2c = cast(dtype, x, w1, w3, w2)  # x [T,H], w1/w3 [E,I,H], w2 [E,H,I] in one dtype
        idx = indices.long()
        if choose_path(xc, w1c, w3c, w2c, idx, weights, swiglu_limit) == "grouped_mm":
            out = grouped_mm_moe_ffn(xc, w1c, w3c, w2c, idx, weights, swiglu_limit)  # [T,H] in dtype
        else:
            out = MoEFFNFunction.apply(xc, w1c, w3c, w2c, idx, weights, swiglu_limit, torch.is_grad_enabled())
        return out.to(x.dtype)  # the reference's output dtype

    return run_or_fall_back("moe_ffn", dtype_signature(x, w1, w3, w2, weights), kernel,
                            lambda: naive_moe_ffn(x, w1, w3, w2, indices, weights, swiglu_limit))
