"""Triton kernels for mHC (``shared/reference/mhc_engram.md`` §3, §3.2). Kernels only.

Tokens are rows: streams [M, n, D] with M = B·S, flattened rows of length nD.

``mhc_pre_kernel`` fuses, per block of BT tokens, what the mHC paper fuses (§3.2 "Kernel fusion"):
one pass over the row computes both x @ fnᵀ and sum(x²) (the RMS division moves after the matmul),
then the coefficient math and all Sinkhorn iterations run in registers on [BT, n, n] tiles, and a
second pass over the same rows (still in cache for small BT) writes the collapsed block input.
``mhc_post_kernel`` fuses expansion and mixing: new = post ⊗ out + combᵀ·X in one read of X.
The backward is three kernels: dpre (one pass over X), the coefficient/Sinkhorn backward on
[BT, n, n] tiles (recomputing the iterations in registers), and dX (one pass over X).

Padding: NP = next power of two of n, MP = padded width of the packed projection ((2+n)n columns).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["mhc_pre_kernel", "mhc_coef_bwd_kernel", "mhc_pre_bwd_dpre_kernel", "mhc_pre_bwd_dx_kernel",
           "mhc_post_kernel", "mhc_post_bwd_kernel"]


@triton.jit
def _unpack_mixes(mix, cols, n, NP: tl.constexpr):
    """Split packed [BT, MP] columns [pre n | post n | comb n*n] into [BT, NP], [BT, NP], [BT, NP, NP].

    Register tensors cannot be sliced, so each part is a one-hot reduction; padding entries are 0.
    """
    i1 = tl.arange(0, NP)
    pre_w = tl.sum(mix[:, None, :] * (cols[None, :] == i1[:, None]).to(tl.float32)[None, :, :], axis=2)
    post_w = tl.sum(mix[:, None, :] * (cols[None, :] == (n + i1)[:, None]).to(tl.float32)[None, :, :], axis=2)
    q = tl.arange(0, NP * NP)  # flat (i, j) of the comb tile
    qi = q // NP
    qj = q % NP
    qcol = tl.where((qi < n) & (qj < n), 2 * n + qi * n + qj, -1)
    comb_w = tl.sum(mix[:, None, :] * (cols[None, :] == qcol[:, None]).to(tl.float32)[None, :, :], axis=2)
    return pre_w, post_w, tl.reshape(comb_w, (mix.shape[0], NP, NP))


@triton.jit
def _comb_softmax(comb_w, s2, base_ptr, n, NP: tl.constexpr):
    """Row softmax of scale·comb_w + base over the valid n×n block: (softmax [BT,NP,NP], valid [NP,NP])."""
    i1 = tl.arange(0, NP)
    valid = (i1[:, None] < n) & (i1[None, :] < n)  # [NP, NP]
    cb = tl.load(base_ptr + 2 * n + i1[:, None] * n + i1[None, :], mask=valid, other=0.0)
    logits = tl.where(valid[None, :, :], comb_w * s2 + cb[None, :, :], -1.0e30)
    e = tl.where(valid[None, :, :], tl.exp(logits - tl.max(logits, axis=2)[:, :, None]), 0.0)
    den = tl.sum(e, axis=2)
    return e / tl.where(den > 0.0, den, 1.0)[:, :, None], valid


@triton.jit
def _sinkhorn_step(x, op, hc_eps):
    """Normalisation step ``op`` of the V4 Sinkhorn: even = columns (sum over i), odd = rows (sum over j)."""
    if op % 2 == 0:
        y = x / (tl.sum(x, axis=1)[:, None, :] + hc_eps)
    else:
        y = x / (tl.sum(x, axis=2)[:, :, None] + hc_eps)
    return y


@triton.jit
def mhc_pre_kernel(
    x_ptr, fn_ptr, base_ptr, scale_ptr, post_ptr, comb_ptr, pre_ptr, mix_ptr, rstd_ptr, coll_ptr,
    M, n, D, iters, hc_eps, norm_eps,
    sxm, sxn, sxd, sfr, sfc,
    NP: tl.constexpr, MP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
    PREC: tl.constexpr,
):
    """(post, comb, pre, mixes, rstd, collapsed) for BT tokens; grid (M/BT,). x is read as fp32."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)  # [BT]
    rmask = rows < M
    r64 = rows.to(tl.int64)
    nD = n * D
    cols = tl.arange(0, MP)  # [MP] packed projection rows
    cmask = cols < (2 + n) * n
    # pass 1: z = x @ fn^T and sum of squares, over the flattened nD row
    z = tl.zeros((BT, MP), tl.float32)
    ss = tl.zeros((BT,), tl.float32)
    for k0 in range(0, nD, BK):
        ks = k0 + tl.arange(0, BK)  # [BK] positions in the flat row: stream ks // D, feature ks % D
        kmask = ks < nD
        xt = tl.load(x_ptr + r64[:, None] * sxm + (ks // D)[None, :] * sxn + (ks % D)[None, :] * sxd,
                     mask=rmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)  # [BT, BK]
        ss += tl.sum(xt * xt, axis=1)
        ft = tl.load(fn_ptr + cols[None, :] * sfr + ks[:, None] * sfc,
                     mask=kmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)  # [BK, MP]
        z = tl.dot(xt, ft, z, input_precision=PREC)
    rstd = 1.0 / tl.sqrt(ss / nD + norm_eps)
    mix = z * rstd[:, None]  # [BT, MP] = RMSNorm(x) @ fn^T
    tl.store(mix_ptr + r64[:, None] * MP + cols[None, :], mix, mask=rmask[:, None])
    tl.store(rstd_ptr + rows, rstd, mask=rmask)
    i1 = tl.arange(0, NP)  # [NP]
    vmask = i1 < n
    pre_w, post_w, comb_w = _unpack_mixes(mix, cols, n, NP)
    s0 = tl.load(scale_ptr + 0)
    s1 = tl.load(scale_ptr + 1)
    s2 = tl.load(scale_ptr + 2)
    pre = tl.sigmoid(pre_w * s0 + tl.load(base_ptr + i1, mask=vmask, other=0.0)[None, :]) + hc_eps
    post = 2.0 * tl.sigmoid(post_w * s1 + tl.load(base_ptr + n + i1, mask=vmask, other=0.0)[None, :])
    soft, valid = _comb_softmax(comb_w, s2, base_ptr, n, NP)
    comb = tl.where(valid[None, :, :], soft + hc_eps, 0.0)
    for op in range(2 * iters - 1):  # columns, then (rows, columns) x (iters - 1)
        comb = _sinkhorn_step(comb, op, hc_eps)
    nmask = rmask[:, None] & vmask[None, :]
    tl.store(pre_ptr + r64[:, None] * n + i1[None, :], pre, mask=nmask)
    tl.store(post_ptr + r64[:, None] * n + i1[None, :], post, mask=nmask)
    coff = r64[:, None, None] * (n * n) + i1[None, :, None] * n + i1[None, None, :]
    tl.store(comb_ptr + coff, comb, mask=rmask[:, None, None] & valid[None, :, :])
    # pass 2: collapsed = sum_i pre[i] * x[i]
    for d0 in range(0, D, BD):
        dd = d0 + tl.arange(0, BD)
        dmask = dd < D
        xs = tl.load(x_ptr + r64[:, None, None] * sxm + i1[None, :, None] * sxn + dd[None, None, :] * sxd,
                     mask=nmask[:, :, None] & dmask[None, None, :], other=0.0).to(tl.float32)  # [BT, NP, BD]
        coll = tl.sum(xs * pre[:, :, None], axis=1)
        tl.store(coll_ptr + r64[:, None] * D + dd[None, :], coll.to(coll_ptr.dtype.element_ty),
                 mask=rmask[:, None] & dmask[None, :])


@triton.jit
def mhc_coef_bwd_kernel(
    mix_ptr, base_ptr, scale_ptr, dpre_ptr, dpost_ptr, dcomb_ptr, dz_ptr, M, n, iters, hc_eps,
    NP: tl.constexpr, MP: tl.constexpr, BT: tl.constexpr,
):
    """Gradient of the coefficient logits z = scale·mixes + base, per packed column; grid (M/BT,).

    pre = sigmoid(z) + eps, post = 2 sigmoid(z), comb = Sinkhorn(softmax(z) + eps). The Sinkhorn
    backward recomputes its iterations on chip (mhc_engram.md §3.2): reverse step o re-runs steps
    0..o-1 from the softmax, then applies y = x / s  ->  dx = (dy - sum(dy * y)) / s. O(iters²)
    work on [BT, n, n] tiles, no stored intermediates.
    """
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    rmask = rows < M
    r64 = rows.to(tl.int64)
    cols = tl.arange(0, MP)
    mix = tl.load(mix_ptr + r64[:, None] * MP + cols[None, :], mask=rmask[:, None], other=0.0)
    pre_w, post_w, comb_w = _unpack_mixes(mix, cols, n, NP)
    i1 = tl.arange(0, NP)
    vmask = i1 < n
    nmask = rmask[:, None] & vmask[None, :]
    s0 = tl.load(scale_ptr + 0)
    s1 = tl.load(scale_ptr + 1)
    s2 = tl.load(scale_ptr + 2)
    sp = tl.sigmoid(pre_w * s0 + tl.load(base_ptr + i1, mask=vmask, other=0.0)[None, :])
    sq = tl.sigmoid(post_w * s1 + tl.load(base_ptr + n + i1, mask=vmask, other=0.0)[None, :])
    dpre = tl.load(dpre_ptr + r64[:, None] * n + i1[None, :], mask=nmask, other=0.0)
    dpost = tl.load(dpost_ptr + r64[:, None] * n + i1[None, :], mask=nmask, other=0.0)
    tl.store(dz_ptr + r64[:, None] * MP + i1[None, :], dpre * sp * (1.0 - sp), mask=nmask)
    tl.store(dz_ptr + r64[:, None] * MP + n + i1[None, :], 2.0 * dpost * sq * (1.0 - sq), mask=nmask)
    soft, valid = _comb_softmax(comb_w, s2, base_ptr, n, NP)
    p0 = tl.where(valid[None, :, :], soft + hc_eps, 0.0)
    cmask = rmask[:, None, None] & valid[None, :, :]
    g = tl.load(dcomb_ptr + r64[:, None, None] * (n * n) + i1[None, :, None] * n + i1[None, None, :],
                mask=cmask, other=0.0)  # [BT, NP, NP] gradient w.r.t. the final comb
    n_ops = 2 * iters - 1
    for r in range(n_ops):
        o = n_ops - 1 - r
        x = p0
        for q in range(o):  # recompute the input of step o
            x = _sinkhorn_step(x, q, hc_eps)
        if o % 2 == 0:  # (branch-local names: the two denominators have different shapes)
            col_den = tl.sum(x, axis=1)[:, None, :] + hc_eps
            g = (g - tl.sum(g * (x / col_den), axis=1)[:, None, :]) / col_den
        else:
            row_den = tl.sum(x, axis=2)[:, :, None] + hc_eps
            g = (g - tl.sum(g * (x / row_den), axis=2)[:, :, None]) / row_den
    dlogit = tl.where(valid[None, :, :], soft * (g - tl.sum(g * soft, axis=2)[:, :, None]), 0.0)  # softmax bwd
    tl.store(dz_ptr + r64[:, None, None] * MP + 2 * n + i1[None, :, None] * n + i1[None, None, :], dlogit,
             mask=cmask)


@triton.jit
def mhc_pre_bwd_dpre_kernel(
    x_ptr, dcoll_ptr, dpre_ptr, M, n, D, sxm, sxn, sxd,
    NP: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):
    """dpre[m, i] = sum_d dcollapsed[m, d] * x[m, i, d]; grid (M/BT,)."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    rmask = rows < M
    r64 = rows.to(tl.int64)
    i1 = tl.arange(0, NP)
    nmask = rmask[:, None] & (i1 < n)[None, :]
    acc = tl.zeros((BT, NP), tl.float32)
    for d0 in range(0, D, BD):
        dd = d0 + tl.arange(0, BD)
        dmask = dd < D
        xs = tl.load(x_ptr + r64[:, None, None] * sxm + i1[None, :, None] * sxn + dd[None, None, :] * sxd,
                     mask=nmask[:, :, None] & dmask[None, None, :], other=0.0).to(tl.float32)
        dc = tl.load(dcoll_ptr + r64[:, None] * D + dd[None, :], mask=rmask[:, None] & dmask[None, :],
                     other=0.0).to(tl.float32)  # [BT, BD]
        acc += tl.sum(xs * dc[:, None, :], axis=2)
    tl.store(dpre_ptr + r64[:, None] * n + i1[None, :], acc, mask=nmask)


@triton.jit
def mhc_pre_bwd_dx_kernel(
    x_ptr, fn_ptr, dz_ptr, coef_ptr, pre_ptr, dcoll_ptr, dx_ptr,
    M, n, D, sxm, sxn, sxd, sfr, sfc,
    MP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):
    """dx[m, c] = dz[m] . fn[:, c] + coef[m] * x[m, c] + pre[m, c // D] * dcoll[m, c % D]; grid (M/BT, nD/BK).

    dz = dmixes * rstd is the gradient of x @ fnᵀ, coef = -rstd² (dmixes . mixes) / nD the gradient
    through the RMS normaliser, and the last term the gradient through the collapse.
    """
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    rmask = rows < M
    r64 = rows.to(tl.int64)
    ks = tl.program_id(1) * BK + tl.arange(0, BK)
    kmask = ks < n * D
    cols = tl.arange(0, MP)
    cmask = cols < (2 + n) * n
    dz = tl.load(dz_ptr + r64[:, None] * MP + cols[None, :], mask=rmask[:, None], other=0.0)  # [BT, MP]
    ft = tl.load(fn_ptr + cols[:, None] * sfr + ks[None, :] * sfc,
                 mask=cmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)  # [MP, BK]
    acc = tl.dot(dz, ft, input_precision=PREC)  # [BT, BK]
    m2 = rmask[:, None] & kmask[None, :]
    xoff = r64[:, None] * sxm + (ks // D)[None, :] * sxn + (ks % D)[None, :] * sxd
    xt = tl.load(x_ptr + xoff, mask=m2, other=0.0).to(tl.float32)
    coef = tl.load(coef_ptr + rows, mask=rmask, other=0.0)
    pre = tl.load(pre_ptr + r64[:, None] * n + (ks // D)[None, :], mask=m2, other=0.0)
    dc = tl.load(dcoll_ptr + r64[:, None] * D + (ks % D)[None, :], mask=m2, other=0.0).to(tl.float32)
    acc += coef[:, None] * xt + pre * dc
    tl.store(dx_ptr + xoff, acc.to(dx_ptr.dtype.element_ty), mask=m2)


@triton.jit
def mhc_post_kernel(
    out_ptr, x_ptr, post_ptr, comb_ptr, new_ptr, M, n, D,
    NS: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):
    """new[m, k] = post[m, k] * out[m] + sum_j comb[m, j, k] * x[m, j]; grid (M/BT, D/BD). Contiguous tensors."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    rmask = rows < M
    r64 = rows.to(tl.int64)
    dd = tl.program_id(1) * BD + tl.arange(0, BD)
    dmask = dd < D
    kk = tl.arange(0, NP)
    nmask = rmask[:, None] & (kk < n)[None, :]
    post = tl.load(post_ptr + r64[:, None] * n + kk[None, :], mask=nmask, other=0.0).to(tl.float32)
    bo = tl.load(out_ptr + r64[:, None] * D + dd[None, :], mask=rmask[:, None] & dmask[None, :],
                 other=0.0).to(tl.float32)  # [BT, BD]
    acc = post[:, :, None] * bo[:, None, :]  # [BT, NP, BD]
    for j in tl.static_range(NS):
        xj = tl.load(x_ptr + r64[:, None] * (n * D) + j * D + dd[None, :], mask=rmask[:, None] & dmask[None, :],
                     other=0.0).to(tl.float32)  # [BT, BD]
        cj = tl.load(comb_ptr + r64[:, None] * (n * n) + j * n + kk[None, :], mask=nmask, other=0.0)  # [BT, NP]
        acc += cj.to(tl.float32)[:, :, None] * xj[:, None, :]
    noff = r64[:, None, None] * (n * D) + kk[None, :, None] * D + dd[None, None, :]
    tl.store(new_ptr + noff, acc.to(new_ptr.dtype.element_ty), mask=nmask[:, :, None] & dmask[None, None, :])


@triton.jit
def mhc_post_bwd_kernel(
    dnew_ptr, out_ptr, x_ptr, post_ptr, comb_ptr, dout_ptr, dx_ptr, dpost_ptr, dcomb_ptr, M, n, D,
    NS: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):
    """All four gradients of mhc_post for BT tokens, looping over D; grid (M/BT,). Contiguous tensors.

    dout = sum_k post[k] dnew[k]; dx[j] = sum_k comb[j, k] dnew[k];
    dpost[k] = dnew[k] . out; dcomb[j, k] = x[j] . dnew[k].
    """
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    rmask = rows < M
    r64 = rows.to(tl.int64)
    kk = tl.arange(0, NP)
    nmask = rmask[:, None] & (kk < n)[None, :]
    post = tl.load(post_ptr + r64[:, None] * n + kk[None, :], mask=nmask, other=0.0).to(tl.float32)
    dpost = tl.zeros((BT, NP), tl.float32)
    dcomb = tl.zeros((BT, NP, NP), tl.float32)
    for d0 in range(0, D, BD):
        dd = d0 + tl.arange(0, BD)
        dmask = dd < D
        m2 = rmask[:, None] & dmask[None, :]
        dn = tl.load(dnew_ptr + r64[:, None, None] * (n * D) + kk[None, :, None] * D + dd[None, None, :],
                     mask=nmask[:, :, None] & dmask[None, None, :], other=0.0).to(tl.float32)  # [BT, NP, BD]
        bo = tl.load(out_ptr + r64[:, None] * D + dd[None, :], mask=m2, other=0.0).to(tl.float32)
        tl.store(dout_ptr + r64[:, None] * D + dd[None, :],
                 tl.sum(dn * post[:, :, None], axis=1).to(dout_ptr.dtype.element_ty), mask=m2)
        dpost += tl.sum(dn * bo[:, None, :], axis=2)
        for j in tl.static_range(NS):
            xoff = r64[:, None] * (n * D) + j * D + dd[None, :]
            xj = tl.load(x_ptr + xoff, mask=m2, other=0.0).to(tl.float32)  # [BT, BD]
            cj = tl.load(comb_ptr + r64[:, None] * (n * n) + j * n + kk[None, :], mask=nmask,
                         other=0.0).to(tl.float32)  # [BT, NP] = comb[j, :]
            tl.store(dx_ptr + xoff, tl.sum(cj[:, :, None] * dn, axis=1).to(dx_ptr.dtype.element_ty), mask=m2)
            part = tl.sum(xj[:, None, :] * dn, axis=2)  # [BT, NP] = x[j] . dnew[k]
            dcomb += (kk == j).to(tl.float32)[None, :, None] * part[:, None, :]
    tl.store(dpost_ptr + r64[:, None] * n + kk[None, :], dpost, mask=nmask)
    coff = r64[:, None, None] * (n * n) + kk[None, :, None] * n + kk[None, None, :]
    tl.store(dcomb_ptr + coff, dcomb, mask=nmask[:, :, None] & (kk < n)[None, None, :])
