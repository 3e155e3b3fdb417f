"""Expert load balancing of DeepSeekMoE (DeepSeek-V3 report §2.1.2; ../shared/reference/attention.md §1.7).

- Auxiliary-loss-free balancing: after each step every routed expert's correction bias b_i (used only to CHOOSE
  experts, never to weight them) moves by gamma against its load: `b_i -= gamma` if expert i received more than
  the mean load, `b_i += gamma` if fewer (gamma = `moe.bias_update_speed`, 0.001 in V3).
- Complementary sequence-wise balance loss, per sequence of T tokens with K of E experts per token:

      f_i = E / (K T) * sum_t 1[i in TopK_t],   P_i = 1/T * sum_t s'_{i,t},   s'_{i,t} = s_{i,t} / sum_j s_{j,t}
      L_bal = alpha * sum_i f_i P_i            (mean over the batch; alpha = 1e-4 in V3)

  Perfectly uniform routing gives f_i = 1, P_i = 1/E and L_bal = alpha.

The trainer applies the bias update once per optimizer step with `LoadTracker`, which sums `MoE.last_load` over the
step's micro-batches (every forward overwrites it) and reports max load / mean load averaged over layers
(1.0 = perfectly balanced).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbone.moe import MoE, Router


def update_bias_(router: Router, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """One aux-loss-free step: bias += gamma * sign(mean(load) - load). load [E] -> the change [E]."""
    load = load.float().to(router.bias.device)
    delta = gamma * torch.sign(load.mean() - load)
    with torch.no_grad():
        router.bias.add_(delta)
    return delta


def update_router_biases_(model: nn.Module, gamma: float | None = None) -> int:
    """Apply `update_bias_` to every learned-routing MoE layer with the loads of its last forward; -> layers updated.

    gamma defaults to each layer's `moe.bias_update_speed`. Hash-routed layers have no bias and are skipped."""
    n = 0
    for m in model.modules():
        if isinstance(m, MoE) and not m.hashed and m.last_load is not None:
            update_bias_(m.gate, m.last_load, m.gate.cfg.bias_update_speed if gamma is None else gamma)
            n += 1
    return n


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, n_experts: int, alpha: float) -> torch.Tensor:
    """scores [B, T, E] (router affinities, any positive scale), indices [B, T, K] chosen experts -> scalar."""
    b, t, k = indices.shape
    s_norm = scores.float() / scores.float().sum(dim=-1, keepdim=True)                 # s'   [B, T, E]
    p = s_norm.mean(dim=1)                                                             # P_i  [B, E]
    counts = torch.zeros(b, n_experts, device=scores.device).scatter_add_(
        1, indices.reshape(b, -1), torch.ones(b, t * k, device=scores.device))
    f = counts * n_experts / (k * t)                                                   # f_i  [B, E]
    return alpha * (f * p).sum(dim=-1).mean()


def moe_balance_loss(model: nn.Module, batch_size: int, alpha: float = 1e-4) -> torch.Tensor:
    """Sum of `sequence_balance_loss` over the learned-routing MoE layers of the last forward (tokens [B*T])."""
    total = None
    for m in model.modules():
        if isinstance(m, MoE) and not m.hashed and m.last_scores is not None:
            e = m.gate.cfg.n_routed_experts
            scores = m.last_scores.view(batch_size, -1, e)
            indices = m.last_indices.view(batch_size, scores.shape[1], -1)
            loss = sequence_balance_loss(scores, indices, e, alpha)
            total = loss if total is None else total + loss
    if total is None:
        raise ValueError("no MoE layer with learned routing ran a forward pass")
    return total


def learned_moe_layers(model: nn.Module) -> list[MoE]:
    """The MoE modules of `model` that route by learned scores (they own a correction bias)."""
    return [m for m in model.modules() if isinstance(m, MoE) and not m.hashed]


class LoadTracker:
    """Accumulates expert loads across micro-batches and applies the bias update once per optimizer step."""

    def __init__(self, model: nn.Module, speed: float) -> None:
        if speed < 0:
            raise ValueError(f"bias update speed must be >= 0, got {speed}")
        self.layers = learned_moe_layers(model)
        self.speed = speed
        self.loads: list[torch.Tensor | None] = [None] * len(self.layers)

    def collect(self) -> None:
        """Add each layer's `last_load` (from the forward just run) to the running sums, then forget it."""
        for i, layer in enumerate(self.layers):
            if layer.last_load is None:
                continue
            load = layer.last_load.float()
            self.loads[i] = load if self.loads[i] is None else self.loads[i] + load
            layer.last_load = None

    @torch.no_grad()
    def apply(self) -> torch.Tensor | None:
        """Update every router's bias from the summed loads, reset the sums; returns mean(max load / mean load) over
        the layers that received tokens, as a 0-d tensor on the loads' device (read it when logging: nothing here
        waits for the device). A layer without load gets no change (sign(0) = 0), as before."""
        ratios = []
        for layer, load in zip(self.layers, self.loads):
            if load is None:
                continue
            update_bias_(layer.gate, load, self.speed)
            mean = load.mean()
            ratios.append(torch.where(mean > 0, load.max() / mean, torch.nan))
        self.loads = [None] * len(self.layers)
        return torch.nanmean(torch.stack(ratios)) if ratios else None

    def reset(self) -> None:
        """Forget loads collected so far (e.g. from evaluation forwards)."""
        for layer in self.layers:
            layer.last_load = None
        self.loads = [None] * len(self.layers)
