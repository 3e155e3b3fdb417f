"""Auxiliary-loss-free load balancing of MoE routers (DeepSeek-V3 report §2.1.2), applied by the trainer.

Each learned router keeps a per-expert correction bias `b` that is added to the scores for the *choice* of
experts only (never to the weights). After every optimizer update, with `load_i` the number of tokens expert `i`
received over the update's micro-batches and `mean` their average:

    b_i <- b_i + gamma * sign(mean - load_i)

so overloaded experts become less attractive and underloaded ones more. `gamma` is `MoEConfig.bias_update_speed`.
Hash-routed layers (V4's first layers) choose experts by token id and have no bias: they are skipped.

`LoadTracker` sums `MoE.last_load` after each micro-batch (every forward overwrites it), then `apply` updates the
biases and returns a balance statistic for the log: the max load over the mean load, averaged over layers
(1.0 = perfectly balanced).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbone.moe import MoE


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
    def apply(self) -> float | None:
        """Update every router's bias from the summed loads, reset the sums; returns mean(max load / mean load)."""
        ratios = []
        for layer, load in zip(self.layers, self.loads):
            if load is None or load.sum() == 0:
                continue
            mean = load.mean()
            bias = layer.gate.bias
            bias.add_(self.speed * torch.sign(mean - load).to(device=bias.device, dtype=bias.dtype))
            ratios.append(float(load.max() / mean))
        self.loads = [None] * len(self.layers)
        return sum(ratios) / len(ratios) if ratios else None

    def reset(self) -> None:
        """Forget loads collected so far (e.g. from evaluation forwards)."""
        for layer in self.layers:
            layer.last_load = None
        self.loads = [None] * len(self.layers)
