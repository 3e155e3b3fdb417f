"""Public mHC ops ``mhc_pre`` and ``mhc_post`` (``shared/reference/mhc_engram.md`` §3).

One mHC site around a block F (attention or FFN):

    post, comb, collapsed = mhc_pre(streams, fn, base, scale, iters, hc_eps, norm_eps)
    new_streams = mhc_post(F(collapsed), streams, post, comb)

Dispatch (``kernels/dispatch.py``): Triton on CUDA or under the interpreter, else the references in
``naive.py`` (logged once). The Triton forward of ``mhc_pre`` is one kernel (norm + projection +
coefficients + Sinkhorn + collapse); its backward is three kernels (dpre pass over X, coefficient
and Sinkhorn backward recomputed on chip, dX pass over X) plus one GEMM for dfn. ``mhc_post`` is one
kernel each way.

Dtypes: no cast is needed before these launches. Every float operand is read in the kernels with
``.to(tl.float32)`` (or passed as fp32: fn, base, scale, post, comb, the coefficient buffers), and the only
``tl.dot``s (x·fnᵀ, dz·fn) see two fp32 tiles, so streams, block_out, post, comb and the incoming gradients may
each have their own dtype (a bf16 block output under autocast with fp32 streams is fine). Outputs are in the
reference's dtypes: post and comb fp32, the collapsed input and the new streams in ``streams.dtype``. A kernel
Triton cannot compile for a call's dtypes falls back to the reference, forward or backward
(``dispatch.run_or_fall_back``).
"""

from __future__ import annotations

import torch

from ..dispatch import (cdiv, dot_precision, dtype_signature, next_power_of_2, reference_vjp, run_or_fall_back,
                        use_triton)
from .naive import naive_mhc_post, naive_mhc_pre

__all__ = ["mhc_pre", "mhc_post", "MHCPreFunction", "MHCPostFunction"]


def _pads(n: int) -> tuple[int, int]:
    """NP = padded stream count, MP = padded packed-projection width (>= 16 for tl.dot)."""
    return next_power_of_2(n), max(16, next_power_of_2((2 + n) * n))


def _tiles(device: torch.device) -> tuple[int, int, int]:
    """(BT tokens, BK flat-row chunk, BD feature chunk)."""
    return (16, 128, 128) if device.type == "cuda" else (16, 32, 32)


class MHCPreFunction(torch.autograd.Function):
    """Fused mHC coefficients + Sinkhorn + collapse (forward); Triton backward incl. Sinkhorn."""

    @staticmethod
    def forward(ctx, streams, fn, base, scale, sinkhorn_iters, hc_eps, norm_eps):  # noqa: D102
        from .triton import mhc_pre_kernel

        B, S, n, D = streams.shape
        M = B * S
        NP, MP = _pads(n)
        BT, BK, BD = _tiles(streams.device)
        x = streams.reshape(M, n, D).contiguous()  # [M, n, D]
        dev = streams.device
        post = torch.empty(M, n, dtype=torch.float32, device=dev)
        comb = torch.empty(M, n, n, dtype=torch.float32, device=dev)
        pre = torch.empty(M, n, dtype=torch.float32, device=dev)
        mixes = torch.empty(M, MP, dtype=torch.float32, device=dev)  # padded columns stay unused
        coll = torch.empty(M, D, dtype=streams.dtype, device=dev)
        rstd = torch.empty(M, dtype=torch.float32, device=dev)  # 1/sqrt(mean(x²) + norm_eps)
        fn32 = fn.float()
        mhc_pre_kernel[(cdiv(M, BT),)](
            x, fn32, base.float().contiguous(), scale.float().contiguous(), post, comb, pre, mixes, rstd, coll,
            M, n, D, int(sinkhorn_iters), float(hc_eps), float(norm_eps),
            *x.stride(), *fn32.stride(),
            NP=NP, MP=MP, BT=BT, BK=BK, BD=BD, PREC=dot_precision(torch.float32),
        )
        ctx.save_for_backward(x, fn32, base, scale, pre, mixes, rstd)
        ctx.cfg = (B, S, n, D, int(sinkhorn_iters), float(hc_eps))
        ctx.norm_eps = float(norm_eps)
        ctx.fn_dtype = fn.dtype
        return post.view(B, S, n), comb.view(B, S, n, n), coll.view(B, S, D)

    @staticmethod
    def backward(ctx, dpost, dcomb, dcoll):  # noqa: D102
        x, fn32, base, scale = ctx.saved_tensors[:4]
        B, S, n, D, iters, hc_eps = ctx.cfg

        def reference():
            fn = lambda x_, f_, b_, s_: naive_mhc_pre(x_.view(B, S, n, D), f_, b_, s_, iters, hc_eps,  # noqa: E731
                                                      ctx.norm_eps)
            need = ctx.needs_input_grad[:4]
            dx, dfn, dbase, dscale = reference_vjp(fn, (x, fn32, base, scale), need, (dpost, dcomb, dcoll))
            return (None if dx is None else dx.view(B, S, n, D), None if dfn is None else dfn.to(ctx.fn_dtype),
                    dbase, dscale, None, None, None)

        return run_or_fall_back("mhc_pre.backward", dtype_signature(x, base, scale, dpost, dcomb, dcoll),
                                lambda: MHCPreFunction._backward(ctx, dpost, dcomb, dcoll), reference)

    @staticmethod
    def _backward(ctx, dpost, dcomb, dcoll):
        """The Triton backward: dstreams [B,S,n,D] in x's dtype, dfn [(2+n)n,nD], dbase, dscale in theirs."""
        from .triton import mhc_coef_bwd_kernel, mhc_pre_bwd_dpre_kernel, mhc_pre_bwd_dx_kernel

        x, fn32, base, scale, pre, mixes, rstd = ctx.saved_tensors
        B, S, n, D = ctx.cfg[:4]
        iters, hc_eps = ctx.cfg[4:]
        M = B * S
        NP, MP = _pads(n)
        BT, BK, BD = _tiles(x.device)
        W = (2 + n) * n
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=x.device)  # noqa: E731
        dpost = zeros(M, n) if dpost is None else dpost.reshape(M, n).float()
        dcomb = zeros(M, n, n) if dcomb is None else dcomb.reshape(M, n, n).float()
        dcoll = torch.zeros(M, D, dtype=x.dtype, device=x.device) if dcoll is None else dcoll.reshape(M, D).contiguous()
        # 1. gradient of the collapse weights: dpre[m, i] = dcoll[m] . x[m, i]
        dpre = torch.empty(M, n, dtype=torch.float32, device=x.device)
        mhc_pre_bwd_dpre_kernel[(cdiv(M, BT),)](
            x, dcoll, dpre, M, n, D, *x.stride(), NP=NP, BT=BT, BD=BD)
        # 2. coefficient + Sinkhorn backward: dlogit of z = scale * mixes + base, per packed column
        dlogit = torch.zeros(M, MP, dtype=torch.float32, device=x.device)
        base32, scale32 = base.detach().float().contiguous(), scale.detach().float().contiguous()
        mhc_coef_bwd_kernel[(cdiv(M, BT),)](
            mixes, base32, scale32, dpre, dpost.contiguous(), dcomb.contiguous(), dlogit, M, n, iters, hc_eps,
            NP=NP, MP=MP, BT=BT)
        dlogit = dlogit[:, :W]
        # [W]: scale of each packed column (pre n | post n | comb n*n); expand, not repeat_interleave with a
        # tensor of counts, which would copy the counts to the device and read the output size back
        col_scale = torch.cat([scale32[0].expand(n), scale32[1].expand(n), scale32[2].expand(n * n)])
        dmix = dlogit * col_scale
        dbase = dlogit.sum(0)
        dscale = torch.stack([(part_g * part_m).sum() for part_g, part_m in
                              zip(dlogit.split([n, n, n * n], -1), mixes[:, :W].split([n, n, n * n], -1))])
        # 3. back through mixes = rstd * (x @ fn^T): dz = dmix * rstd, d(rstd) -> coef * x
        dz = torch.zeros(M, MP, dtype=torch.float32, device=x.device)
        dz[:, :W] = dmix * rstd[:, None]
        coef = -(rstd ** 2) * (dmix * mixes[:, :W]).sum(-1) / (n * D)  # [M]
        dx = torch.empty(M, n, D, dtype=x.dtype, device=x.device)
        mhc_pre_bwd_dx_kernel[(cdiv(M, BT), cdiv(n * D, BK))](
            x, fn32, dz, coef, pre, dcoll, dx, M, n, D, *x.stride(), *fn32.stride(),
            MP=MP, BT=BT, BK=BK, PREC=dot_precision(torch.float32),
        )
        # dfn = dz^T @ x: one GEMM over the tokens, left to the vendor BLAS
        dfn = dz[:, :W].T.to(x.dtype) @ x.reshape(M, n * D)  # [W, nD]
        return (dx.view(B, S, n, D), dfn.to(ctx.fn_dtype), dbase.to(base.dtype),
                dscale.to(scale.dtype), None, None, None)


class MHCPostFunction(torch.autograd.Function):
    """Fused expansion + mixing (forward) and all four gradients in one kernel (backward)."""

    @staticmethod
    def forward(ctx, block_out, streams, post, comb):  # noqa: D102
        from .triton import mhc_post_kernel

        B, S, n, D = streams.shape
        M = B * S
        NP, _ = _pads(n)
        BT, _, BD = _tiles(streams.device)
        bo, x = block_out.reshape(M, D).contiguous(), streams.reshape(M, n, D).contiguous()
        p, c = post.reshape(M, n).contiguous(), comb.reshape(M, n, n).contiguous()
        new = torch.empty(M, n, D, dtype=streams.dtype, device=streams.device)
        mhc_post_kernel[(cdiv(M, BT), cdiv(D, BD))](
            bo, x, p, c, new, M, n, D, NS=n, NP=NP, BT=BT, BD=BD)
        ctx.save_for_backward(bo, x, p, c)
        ctx.dtypes = (block_out.dtype, post.dtype, comb.dtype)
        ctx.shapes = (block_out.shape, streams.shape, post.shape, comb.shape)
        return new.view(B, S, n, D)

    @staticmethod
    def backward(ctx, dnew):  # noqa: D102
        bo, x, p, c = ctx.saved_tensors
        M, n, D = x.shape

        def reference():
            fn = lambda bo_, x_, p_, c_: naive_mhc_post(bo_.view(1, M, D), x_.view(1, M, n, D),  # noqa: E731
                                                        p_.view(1, M, n), c_.view(1, M, n, n))
            grads = reference_vjp(fn, (bo, x, p, c), ctx.needs_input_grad, (dnew.reshape(1, M, n, D),))
            return tuple(None if g is None else g.to(dtype).view(shape)
                         for g, dtype, shape in zip(grads, (ctx.dtypes[0], x.dtype, *ctx.dtypes[1:]), ctx.shapes))

        return run_or_fall_back("mhc_post.backward", dtype_signature(bo, x, p, c, dnew),
                                lambda: MHCPostFunction._backward(ctx, dnew), reference)

    @staticmethod
    def _backward(ctx, dnew):
        """The Triton backward: the four gradients in their inputs' dtypes and shapes."""
        from .triton import mhc_post_bwd_kernel

        bo, x, p, c = ctx.saved_tensors
        M, n, D = x.shape
        NP, _ = _pads(n)
        BT, _, BD = _tiles(x.device)
        dnew = dnew.reshape(M, n, D).contiguous()
        dbo = torch.empty(M, D, dtype=ctx.dtypes[0], device=x.device)
        dx = torch.empty_like(x)
        dpost = torch.empty(M, n, dtype=torch.float32, device=x.device)
        dcomb = torch.empty(M, n, n, dtype=torch.float32, device=x.device)
        mhc_post_bwd_kernel[(cdiv(M, BT),)](
            dnew, bo, x, p, c, dbo, dx, dpost, dcomb, M, n, D, NS=n, NP=NP, BT=BT, BD=BD)
        s_bo, s_x, s_p, s_c = ctx.shapes
        return (dbo.view(s_bo), dx.view(s_x), dpost.to(ctx.dtypes[1]).view(s_p), dcomb.to(ctx.dtypes[2]).view(s_c))


def mhc_pre(
    streams: torch.Tensor,
    fn: torch.Tensor,
    base: torch.Tensor,
    scale: torch.Tensor,
    sinkhorn_iters: int,
    hc_eps: float,
    norm_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coefficients of one mHC site and the collapsed block input (DeepSeek-V4 formulation).

    Args:
        streams: [B, S, n, D] residual streams.
        fn: [(2+n)n, nD] packed projection [pre | post | comb]; base: [(2+n)n]; scale: [3].
        sinkhorn_iters: Sinkhorn-Knopp iterations (>= 1; V4 uses 20).
        hc_eps: mHC epsilon (V4: 1e-6); norm_eps: RMSNorm epsilon of the flattened streams.

    Returns:
        post [B, S, n] fp32, comb [B, S, n, n] fp32, collapsed [B, S, D] in ``streams.dtype``.
        Differentiable in streams, fn, base and scale.
    """
    if streams.dim() != 4:
        raise ValueError(f"mhc_pre: streams must be [B,S,n,D], got {tuple(streams.shape)}")
    n, D = streams.shape[-2:]
    W = (2 + n) * n
    if fn.shape != (W, n * D) or base.shape != (W,) or scale.shape != (3,):
        raise ValueError(f"mhc_pre: expected fn [{W},{n * D}], base [{W}], scale [3]; got "
                         f"{tuple(fn.shape)}, {tuple(base.shape)}, {tuple(scale.shape)}")
    if sinkhorn_iters < 1:
        raise ValueError(f"mhc_pre: sinkhorn_iters must be >= 1, got {sinkhorn_iters}")
    if streams.numel() == 0 or not use_triton("mhc_pre", streams):
        return naive_mhc_pre(streams, fn, base, scale, sinkhorn_iters, hc_eps, norm_eps)
    # no cast: the kernels read every float operand as fp32 (module docstring)
    return run_or_fall_back(
        "mhc_pre", dtype_signature(streams, fn, base, scale),
        lambda: MHCPreFunction.apply(streams, fn, base, scale, sinkhorn_iters, hc_eps, norm_eps),
        lambda: naive_mhc_pre(streams, fn, base, scale, sinkhorn_iters, hc_eps, norm_eps))


def mhc_post(
    block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    """New streams: new[..., k, :] = post[k] * block_out + sum_j comb[j, k] * streams[..., j, :].

    Args:
        block_out: [B, S, D]; streams: [B, S, n, D]; post: [B, S, n]; comb: [B, S, n, n] (used transposed).

    Returns:
        [B, S, n, D] in ``streams.dtype``; differentiable in all four inputs.
    """
    if streams.dim() != 4:
        raise ValueError(f"mhc_post: streams must be [B,S,n,D], got {tuple(streams.shape)}")
    B, S, n, D = streams.shape
    if block_out.shape != (B, S, D) or post.shape != (B, S, n) or comb.shape != (B, S, n, n):
        raise ValueError(f"mhc_post: expected block_out [{B},{S},{D}], post [{B},{S},{n}], comb "
                         f"[{B},{S},{n},{n}]; got {tuple(block_out.shape)}, {tuple(post.shape)}, {tuple(comb.shape)}")
    if streams.numel() == 0 or not use_triton("mhc_post", streams):
        return naive_mhc_post(block_out, streams, post, comb)
    # no cast: block_out, streams, post and comb are each read as fp32 in the kernel (module docstring)
    return run_or_fall_back("mhc_post", dtype_signature(block_out, streams, post, comb),
                            lambda: MHCPostFunction.apply(block_out, streams, post, comb),
                            lambda: naive_mhc_post(block_out, streams, post, comb))
