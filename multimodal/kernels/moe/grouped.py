"""Routed-expert SwiGLU FFN on ``torch._grouped_mm``: the MoE op's second fast path, chosen by measurement.

Same semantics as :func:`~multimodal.kernels.moe.naive.naive_moe_ffn`; plain PyTorch ops, so autograd gives
the backward (``torch._grouped_mm`` has a derivative for both operands). Pipeline:

1. sort the T·k (token, slot) pairs by expert (stable); per-expert counts by ``scatter_add`` and their
   cumulative sum as int32 group ends (``offs``), all on the device: nothing travels to the host;
2. gather the token rows into sorted order (through the [T, k, H] expansion, so that the backward sums
   the k slot gradients of a token with one fp32-accumulated reduction, deterministically, instead of
   scatter-adding them in the activation dtype);
3. ``torch._grouped_mm`` for gate and up, V4's clamped SwiGLU, the routing weight on the SwiGLU output
   (the down projection is linear, so this equals weighting its output, on half the bytes when I = H/2),
   ``torch._grouped_mm`` for down;
4. back to slot order and sum the k slots of each token in fp32.

Where ``torch._grouped_mm`` is fast (:func:`grouped_mm_unsupported` says why not elsewhere): on CUDA, bf16 on
compute capability 9.x / 10.x, where it runs CUTLASS grouped GEMMs with the offsets read on the device. On other
GPUs, or other dtypes, PyTorch falls back to one GEMM per group after copying ``offs`` to the host (a sync per
call), so the op does not use it there. On the CPU (fp32, bf16, fp16) that fallback is the only implementation;
it is correct and is what the parity tests run. Every operand's row stride must be a multiple of 16 bytes
(H and I multiples of 8 in bf16, of 4 in fp32), and on CUDA its data pointer 16-byte aligned.
"""

from __future__ import annotations

import torch

from .naive import expert_counts, swiglu

__all__ = ["grouped_mm_moe_ffn", "grouped_mm_unsupported"]

_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def grouped_mm_unsupported(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, k: int) -> str | None:
    """Why :func:`grouped_mm_moe_ffn` should not run on these operands (already in one dtype) with k slots, or None.

    Checks what ``torch._grouped_mm`` checks or silently does slowly: its existence in this torch, the dtype and
    GPU generation of its device-side fast path, the 16-byte stride rule, 16-byte data pointers on CUDA, and
    int32 group offsets.
    """
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm"
    dtype, device = x.dtype, x.device
    if any(w.dtype != dtype for w in (w1, w3, w2)):
        return "operands in different dtypes"
    if device.type == "cuda":
        if torch.version.hip is not None:
            return "ROCm: torch._grouped_mm's fast path needs Composable Kernel builds; not measured here"
        if dtype != torch.bfloat16:
            return f"{dtype} on CUDA: torch._grouped_mm has a device-side fast path for bf16 only"
        major, minor = torch.cuda.get_device_capability(device)
        if major not in (9, 10):
            return f"compute capability {major}.{minor}: torch._grouped_mm's fast path is for sm90 / sm100 only"
    elif device.type == "cpu":
        if dtype not in _CPU_DTYPES:
            return f"{dtype} on the CPU: torch._grouped_mm takes fp32, bf16 and fp16"
    else:
        return f"device type {device.type!r}"
    E, I, H = w1.shape
    size = x.element_size()
    if (H * size) % 16 or (I * size) % 16:
        return f"H={H} or I={I} rows are not a multiple of 16 bytes in {dtype}"
    if x.shape[0] * k >= 2**31:
        return "more than 2^31 routed rows (int32 offsets)"
    if device.type == "cuda":
        for name, w in (("w1", w1), ("w3", w3), ("w2", w2)):
            if w.is_contiguous() and w.data_ptr() % 16:
                return f"{name}'s data pointer is not 16-byte aligned"
    return None


def grouped_mm_moe_ffn(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    swiglu_limit: float | None = None,
) -> torch.Tensor:
    """Routed experts with ``torch._grouped_mm`` (module docstring); differentiable by autograd.

    Args:
        x: [T, H] activations; w1, w3: [E, I, H]; w2: [E, H, I], all in one dtype.
        indices: [T, k] int expert ids in [0, E). weights: [T, k] routing weights (any float dtype).
        swiglu_limit: optional clamp L (gate to max=L, up to [-L, L]).

    Returns:
        [T, H] in ``x.dtype``; slots summed in fp32.
    """
    T, H = x.shape
    E, I, _ = w1.shape
    k = indices.shape[1]
    R = T * k
    w1, w3, w2 = w1.contiguous(), w3.contiguous(), w2.contiguous()
    flat = indices.reshape(-1).long()  # [R] expert of slot s = t*k + j
    order = torch.sort(flat, stable=True).indices  # [R] slot of sorted row r
    counts = expert_counts(flat, E)  # [E] (bincount would sync)
    offs = torch.cumsum(counts, 0, dtype=torch.int32)  # [E] end of each expert's rows
    inv = torch.empty_like(order).scatter_(0, order, torch.arange(R, device=x.device))  # [R] sorted row of slot s
    xs = x[:, None, :].expand(T, k, H).reshape(R, H)[order]  # [R, H] token rows, sorted by expert
    g = torch._grouped_mm(xs, w1.transpose(-2, -1), offs=offs)  # [R, I]
    u = torch._grouped_mm(xs, w3.transpose(-2, -1), offs=offs)  # [R, I]
    wsort = weights.reshape(-1)[order].to(x.dtype)  # [R] routing weight of sorted row r
    h = swiglu(g, u, swiglu_limit) * wsort[:, None]  # [R, I]
    y = torch._grouped_mm(h, w2.transpose(-2, -1), offs=offs)  # [R, H] weighted expert outputs, sorted
    return torch.sum(y[inv].view(T, k, H), dim=1, dtype=torch.float32).to(x.dtype)  # [T, H]
