"""Reference (spec) for Engram retrieval: n-gram hashing of compressed token ids and the table gather.

This is what ``engram_gather`` must reproduce (issue #8, op 5; ``shared/reference/mhc_engram.md`` §4.1,
``multimodal/backbone/engram.py``). With x' the compressed ids of the sequence preceded by the N - 1 ids
carried over from earlier calls (``history``: the compressed pad id at the start, the last N - 1 ids while
decoding), for every position t, n-gram order n = 2..N (o = n - 2) and hash head k:

    mix_n[t]       = XOR_{i<n} (x'_{t-i} * m_i)           wrapping int64 products, odd multipliers m [N]
    row[t, o, k]   = (mix_n[t] mod p[o, k]) + offset[o K + k]   floor mod: in [0, p), then the head's table slice
    e[t]           = concat_{o, k} table[row[t, o, k]]      [(N - 1) K * head_dim] = [d_mem]

Only ``table`` is differentiable: d table = scatter-add of the output gradient's head slices into the rows
they were read from (``F.embedding``'s backward); ids, history, multipliers, primes and offsets are integers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["naive_ngram_rows", "naive_engram_gather"]


def naive_ngram_rows(ids: torch.Tensor, history: torch.Tensor, multipliers: torch.Tensor,
                     primes: torch.Tensor) -> torch.Tensor:
    """Per-head row indices of every suffix n-gram, not yet offset.

    Args:
        ids: [B, S] compressed token ids (int64). history: [B, N - 1] the compressed ids before them.
        multipliers: [N] odd int64. primes: [N - 1, K] int64 moduli, one per (order, head).

    Returns:
        [B, S, (N - 1) K] int64, head o K + k in [0, primes[o, k]).
    """
    n_max = multipliers.shape[0]
    s = ids.shape[1]
    full = torch.cat([history, ids], dim=1).long()                                   # [B, N-1+S]
    mix = torch.zeros_like(full[:, :s])                                              # [B, S]
    heads = []
    for i in range(n_max):                                                           # lag i: x'_{t-i}
        lagged = full[:, n_max - 1 - i: n_max - 1 - i + s]                           # [B, S]
        mix = mix ^ (lagged * multipliers[i])                                        # int64 wraps
        if i >= 1:                                                                   # order n = i + 1 complete
            heads.append(torch.remainder(mix[..., None], primes[i - 1]))             # [B, S, K], floor mod
    return torch.cat(heads, dim=-1)                                                  # [B, S, (N-1)K]


def naive_engram_gather(ids: torch.Tensor, history: torch.Tensor, multipliers: torch.Tensor, primes: torch.Tensor,
                        offsets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Hash the n-grams ending at every position and gather their table rows.

    Args:
        ids: [B, S] compressed token ids. history: [B, N - 1] compressed ids before ``ids``.
        multipliers: [N] int64. primes: [N - 1, K] int64. offsets: [(N - 1) K] int64, first row of each head.
        table: [rows, head_dim] embedding table (any float dtype).

    Returns:
        e [B, S, (N - 1) K * head_dim] in ``table.dtype``; differentiable in ``table`` only.
    """
    rows = naive_ngram_rows(ids, history, multipliers, primes) + offsets             # [B, S, H]
    return F.embedding(rows, table).flatten(-2)                                      # [B, S, H * head_dim]
