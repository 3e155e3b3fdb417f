"""Public Engram retrieval ``engram_gather``: hash every suffix n-gram and gather its table rows, in one pass.

Dispatch (``kernels/dispatch.py``): the Triton path below on CUDA or under the Triton interpreter, else
:func:`~multimodal.kernels.engram.naive.naive_engram_gather` (logged once). The op runs on the device of
``table``: Engram addresses depend on token ids only, so a table kept in host memory is read by the
reference there and only the gathered rows travel (``Transformer.prefetch_engram``).

Forward: one kernel, ``engram_gather_kernel`` (hash in registers, copy the rows; no [B, S, H] index tensor).
Backward (custom ``autograd.Function``): ``engram_scatter_kernel`` recomputes the rows and scatter-adds the
output gradient into an fp32 table gradient with atomics, cast to ``table.dtype`` at the end (a bf16 table
therefore gets its gradient rounded once, not once per addition). Integer inputs get no gradient.

Dtypes: the only float operands are the table (copied as is into an output of its dtype) and the output
gradient (read as fp32 for the fp32 atomics), so no cast is needed; integer inputs may be int32 or int64
(the hash runs in int64). A kernel Triton cannot compile for a call's dtypes falls back to the reference,
forward or backward (``dispatch.run_or_fall_back``).
"""

from __future__ import annotations

import torch

from ..dispatch import cdiv, dtype_signature, next_power_of_2, reference_vjp, run_or_fall_back, use_triton
from .naive import naive_engram_gather

__all__ = ["engram_gather", "EngramGatherFunction"]


def _tiles(device: torch.device, head_dim: int) -> tuple[int, int]:
    """(BT tokens per program, BD table columns per step)."""
    if device.type == "cuda":
        return 64, min(128, max(16, next_power_of_2(head_dim)))
    return 16, min(32, max(4, next_power_of_2(head_dim)))


class EngramGatherFunction(torch.autograd.Function):
    """Fused n-gram hashing + table gather (forward); atomic scatter-add into the table (backward)."""

    @staticmethod
    def forward(ctx, ids, history, multipliers, primes, offsets, table):  # noqa: D102
        from .triton import engram_gather_kernel

        B, S = ids.shape
        NH, K = primes.shape
        H, Dh = NH * K, table.shape[1]
        M = B * S
        BT, BD = _tiles(table.device, Dh)
        mult, offs = multipliers.long().contiguous(), offsets.long().contiguous()
        out = torch.empty(M, H * Dh, dtype=table.dtype, device=table.device)
        engram_gather_kernel[(cdiv(M, BT), H)](
            ids, history, mult, primes, offs, table, out,
            M, S, NH, K, Dh,
            *ids.stride(), *history.stride(), *primes.stride(), *table.stride(), *out.stride(),
            BT=BT, BD=BD,
        )
        ctx.save_for_backward(ids, history, mult, primes, offs)
        ctx.table_shape, ctx.table_dtype = table.shape, table.dtype
        return out.view(B, S, H * Dh)

    @staticmethod
    def backward(ctx, dout):  # noqa: D102
        ids, history, mult, primes, offs = ctx.saved_tensors

        def reference():  # F.embedding's backward never reads the table: a zero stand-in of its shape and dtype
            table = torch.zeros(ctx.table_shape, dtype=ctx.table_dtype, device=dout.device)
            fn = lambda t_: naive_engram_gather(ids, history, mult, primes, offs, t_)  # noqa: E731
            return None, None, None, None, None, reference_vjp(fn, (table,), (True,), (dout,))[0]

        return run_or_fall_back("engram_gather.backward", (str(ctx.table_dtype).removeprefix("torch."),
                                                           *dtype_signature(ids, history, dout)),
                                lambda: EngramGatherFunction._backward(ctx, dout), reference)

    @staticmethod
    def _backward(ctx, dout):
        """The Triton backward: d table [rows, head_dim] in the table's dtype (fp32 atomics, one rounding)."""
        from .triton import engram_scatter_kernel

        ids, history, mult, primes, offs = ctx.saved_tensors
        B, S = ids.shape
        NH, K = primes.shape
        H, Dh = NH * K, ctx.table_shape[1]
        M = B * S
        BT, BD = _tiles(dout.device, Dh)
        g = dout.reshape(M, H * Dh)
        dtable = torch.zeros(ctx.table_shape, dtype=torch.float32, device=dout.device)
        engram_scatter_kernel[(cdiv(M, BT), H)](
            ids, history, mult, primes, offs, g, dtable,
            M, S, NH, K, Dh,
            *ids.stride(), *history.stride(), *primes.stride(), *g.stride(), *dtable.stride(),
            BT=BT, BD=BD,
        )
        return None, None, None, None, None, dtable.to(ctx.table_dtype)


def engram_gather(ids: torch.Tensor, history: torch.Tensor, multipliers: torch.Tensor, primes: torch.Tensor,
                  offsets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Engram memory rows of every position: hash its suffix n-grams (orders 2..N, K heads each), gather.

    Args:
        ids: [B, S] compressed token ids (integer). history: [B, N - 1] the compressed ids before them
            (the compressed pad id at the start of a sequence, the last N - 1 ids while decoding).
        multipliers: [N] odd int64 hash multipliers. primes: [N - 1, K] int64 moduli, one per (order, head).
        offsets: [(N - 1) K] int64, first table row of each head's slice.
        table: [rows, head_dim] embedding table; every tensor lives on ``table``'s device.

    Returns:
        e [B, S, (N - 1) K * head_dim] in ``table.dtype`` (head o K + k in columns [(oK+k) Dh, (oK+k+1) Dh)),
        exactly ``naive_engram_gather``. Differentiable in ``table`` only.
    """
    if ids.dim() != 2 or history.dim() != 2 or multipliers.dim() != 1 or primes.dim() != 2 or table.dim() != 2:
        raise ValueError(f"engram_gather: expected ids [B,S], history [B,N-1], multipliers [N], primes [N-1,K], "
                         f"table [rows,head_dim]; got {tuple(ids.shape)}, {tuple(history.shape)}, "
                         f"{tuple(multipliers.shape)}, {tuple(primes.shape)}, {tuple(table.shape)}")
    N = multipliers.shape[0]
    B = ids.shape[0]
    if N < 2 or history.shape != (B, N - 1) or primes.shape[0] != N - 1 or offsets.shape != (primes.numel(),):
        raise ValueError(f"engram_gather: with N={N} multipliers expected history [{B},{N - 1}], primes "
                         f"[{N - 1},K], offsets [(N-1)K]; got {tuple(history.shape)}, {tuple(primes.shape)}, "
                         f"{tuple(offsets.shape)}")
    for name, t in (("ids", ids), ("history", history), ("multipliers", multipliers), ("primes", primes),
                    ("offsets", offsets)):
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"engram_gather: {name} must be an integer tensor, got {t.dtype}")
    devices = {t.device for t in (ids, history, multipliers, primes, offsets, table)}
    if len(devices) != 1:
        raise ValueError(f"engram_gather: all inputs must be on the table's device {table.device}, got {devices}")
    if ids.numel() == 0 or not use_triton("engram_gather", table):
        return naive_engram_gather(ids, history, multipliers, primes, offsets, table)
    return run_or_fall_back("engram_gather", dtype_signature(ids, history, primes, table),
                            lambda: EngramGatherFunction.apply(ids, history, multipliers, primes, offsets, table),
                            lambda: naive_engram_gather(ids, history, multipliers, primes, offsets, table))
