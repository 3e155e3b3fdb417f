"""Reference (spec) for the routed-expert SwiGLU FFN: a readable per-expert loop in fp32.

This is the semantics ``moe_ffn`` must reproduce (issue #8, op 1). For every token t and each of its
k routing slots j, with e = indices[t, j]:

    g = w1[e] @ x[t]            gate,  clamped to max=L        when swiglu_limit L is set
    u = w3[e] @ x[t]            up,    clamped to [-L, L]      when swiglu_limit L is set
    out[t] += weights[t, j] * w2[e] @ (silu(g) * u)

The clamp follows DeepSeek-V4's ``swiglu_limit`` (transformers' ``DeepseekV4MLP``: gate
``clamp(max=L)``, up ``clamp(-L, L)``). Autograd through this loop is the gradient reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["expert_counts", "naive_moe_ffn", "swiglu"]


def swiglu(g: torch.Tensor, u: torch.Tensor, swiglu_limit: float | None) -> torch.Tensor:
    """silu(clamp(g, max=L)) * clamp(u, -L, L); no clamp when ``swiglu_limit`` is None."""
    if swiglu_limit is not None:
        g = g.clamp(max=swiglu_limit)
        u = u.clamp(min=-swiglu_limit, max=swiglu_limit)
    return F.silu(g) * u


def expert_counts(flat: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Tokens per expert [E] (int64) of flat expert ids [N], without reading anything on the host (`bincount` on CUDA
    reads its input's maximum to size its output, a synchronisation in every MoE layer)."""
    return torch.zeros(n_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat.long(),
                                                                                    torch.ones_like(flat, dtype=torch.long))


def naive_moe_ffn(
    x: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    swiglu_limit: float | None = None,
) -> torch.Tensor:
    """Routed experts, one expert at a time (computed in fp32, returned in ``x.dtype``).

    Args:
        x: [T, H] token activations.
        w1: [E, I, H] gate projections. w3: [E, I, H] up projections. w2: [E, H, I] down projections.
        indices: [T, k] int64 expert ids in [0, E).
        weights: [T, k] routing weights.
        swiglu_limit: optional clamp L of the SwiGLU inputs.

    Returns:
        [T, H] = sum over slots of weight * expert(x).
    """
    T, H = x.shape
    E = w1.shape[0]
    xf = x.float()
    out = torch.zeros(T, H, dtype=torch.float32, device=x.device)
    for e in range(E):
        token, slot = torch.where(indices == e)  # rows routed to expert e, and which of their k slots
        if token.numel() == 0:
            continue
        xe = xf[token]  # [n_e, H]
        g = xe @ w1[e].float().T  # [n_e, I]
        u = xe @ w3[e].float().T  # [n_e, I]
        y = swiglu(g, u, swiglu_limit) @ w2[e].float().T  # [n_e, H]
        out = out.index_add(0, token, y * weights[token, slot].float()[:, None])
    return out.to(x.dtype)
