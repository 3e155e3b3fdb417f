"""Triton kernels for Engram retrieval: n-gram hashing fused with the table gather, and its scatter-add
backward. Kernels only.

Tokens are rows m = b S + s of the [B, S] ids; heads are h = o K + k (order n = o + 2, hash head k), and
the output is e [M, H * Dh] with head h in columns [h Dh, (h + 1) Dh). One program handles BT tokens of one
head (grid (M / BT, H)):

1. ``_ngram_rows`` hashes the n-grams in registers: it reads the n = o + 2 lagged ids of each token
   (from ``ids`` for t - i >= 0, else from the carried ``history``), XORs the wrapping int64 products with
   the multipliers, reduces modulo the head's prime (C remainder, then + p where negative: floor mod, like
   ``torch.remainder``) and adds the head's offset. The row indices never exist in memory.
2. ``engram_gather_kernel`` copies the BT table rows into the output, BD columns at a time.
3. ``engram_scatter_kernel`` (backward) recomputes the same rows and ``atomic_add``s the output gradient's
   head slice into an fp32 gradient table. A row read by several tokens (a repeated n-gram, or a hash
   collision) accumulates all their gradients; on a GPU the order of those fp32 additions is not fixed.

Recomputing the hash per head costs n <= N loads of ids per token, small next to the Dh-wide row it moves.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["engram_gather_kernel", "engram_scatter_kernel"]


@triton.jit
def _ngram_rows(ids_ptr, hist_ptr, mult_ptr, primes_ptr, offsets_ptr, tok, tmask, h, S, NH, K,
                sib, sis, shb, shs, spo, spk):
    """Offset table rows [BT] int64 of head h for tokens ``tok`` [BT] (int64, masked by ``tmask``)."""
    b = tok // S
    s = tok % S
    o = h // K  # order n = o + 2
    kk = h % K
    mix = tl.zeros(tok.shape, tl.int64)
    for i in range(o + 2):  # lag i: x'_{s-i}; negative positions come from the carried history
        t = s - i
        cur = tl.load(ids_ptr + b * sib + t * sis, mask=tmask & (t >= 0), other=0)
        past = tl.load(hist_ptr + b * shb + (NH + t) * shs, mask=tmask & (t < 0), other=0)
        x = tl.where(t >= 0, cur, past).to(tl.int64)
        mix = mix ^ (x * tl.load(mult_ptr + i))  # int64 products wrap
    p = tl.load(primes_ptr + o * spo + kk * spk).to(tl.int64)
    r = mix % p  # C remainder: sign of mix
    r = tl.where(r < 0, r + p, r)  # floor mod, in [0, p)
    return r + tl.load(offsets_ptr + h).to(tl.int64)


@triton.jit
def engram_gather_kernel(
    ids_ptr, hist_ptr, mult_ptr, primes_ptr, offsets_ptr, table_ptr, out_ptr,
    M, S, NH, K, Dh,
    sib, sis, shb, shs, spo, spk, stt, std, som, sod,
    BT: tl.constexpr, BD: tl.constexpr,
):
    """out[m, h Dh + d] = table[row(m, h), d] for BT tokens of head h = program_id(1)."""
    h = tl.program_id(1)
    tok = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)  # [BT]
    tmask = tok < M
    rows = _ngram_rows(ids_ptr, hist_ptr, mult_ptr, primes_ptr, offsets_ptr, tok, tmask, h, S, NH, K,
                       sib, sis, shb, shs, spo, spk)  # [BT]
    for d0 in range(0, Dh, BD):
        ds = d0 + tl.arange(0, BD)
        mask = tmask[:, None] & (ds < Dh)[None, :]
        vals = tl.load(table_ptr + rows[:, None] * stt + ds[None, :] * std, mask=mask, other=0.0)  # [BT, BD]
        tl.store(out_ptr + tok[:, None] * som + (h * Dh + ds)[None, :] * sod, vals, mask=mask)


@triton.jit
def engram_scatter_kernel(
    ids_ptr, hist_ptr, mult_ptr, primes_ptr, offsets_ptr, dout_ptr, dtable_ptr,
    M, S, NH, K, Dh,
    sib, sis, shb, shs, spo, spk, sgm, sgd, stt, std,
    BT: tl.constexpr, BD: tl.constexpr,
):
    """dtable[row(m, h), d] += dout[m, h Dh + d] (fp32 atomics) for BT tokens of head h = program_id(1)."""
    h = tl.program_id(1)
    tok = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)  # [BT]
    tmask = tok < M
    rows = _ngram_rows(ids_ptr, hist_ptr, mult_ptr, primes_ptr, offsets_ptr, tok, tmask, h, S, NH, K,
                       sib, sis, shb, shs, spo, spk)  # [BT]
    for d0 in range(0, Dh, BD):
        ds = d0 + tl.arange(0, BD)
        mask = tmask[:, None] & (ds < Dh)[None, :]
        g = tl.load(dout_ptr + tok[:, None] * sgm + (h * Dh + ds)[None, :] * sgd, mask=mask, other=0.0)
        tl.atomic_add(dtable_ptr + rows[:, None] * stt + ds[None, :] * std, g.to(tl.float32), mask=mask)
