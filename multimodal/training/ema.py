"""Exponential moving average of the weights: what the exported model is made of when `TrainConfig.ema_decay > 0`.

Diffusion models sample markedly better from an average of their recent weights than from the last iterate (DDPM,
arXiv 2006.11239, and every latent-diffusion recipe since: decay 0.999-0.9999). After each optimizer update,

    shadow <- d_t * shadow + (1 - d_t) * param,    d_t = min(decay, (1 + t) / (10 + t))

for every floating-point parameter, in fp32, where t counts updates; the warm-up of `d_t` keeps the first shadows
from being dominated by the random initialisation. Buffers (MoE router biases, hash tables) are not averaged: they
are taken from the live model. `applied(model)` swaps the shadows into the model for evaluation or export and swaps
the trained weights back afterwards, bit for bit.

    ema = EMA(model, decay=0.999)
    ...; optimizer.step(); ema.update(model)
    with ema.applied(model):
        pipeline.save_pretrained("out")
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class EMA:
    """fp32 moving averages of `model`'s floating-point parameters, keyed by parameter name."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()
                       if p.is_floating_point()}

    def current_decay(self) -> float:
        """d_t of the next update."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every shadow towards the model's current parameter."""
        d = self.current_decay()
        pairs = [(self.shadow[name], p.detach().float()) for name, p in model.named_parameters() if name in self.shadow]
        if pairs:                                                   # one multi-tensor launch, not one per parameter
            torch._foreach_lerp_([s for s, _ in pairs], [p for _, p in pairs], 1.0 - d)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block the model holds the averaged weights (cast to each parameter's dtype); on exit, exactly
        the weights it had before."""
        params = dict(model.named_parameters())
        saved = {name: params[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, value in self.shadow.items():
                params[name].copy_(value)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadows, plus the update count as a one-element tensor under `__updates__`."""
        return {**self.shadow, "__updates__": torch.tensor([self.updates], dtype=torch.long)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow) - {"__updates__"})
        if missing or unexpected:
            raise ValueError(f"EMA state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name in self.shadow:
            self.shadow[name] = state[name].detach().float().clone().to(self.shadow[name].device)
        self.updates = int(state["__updates__"][0]) if "__updates__" in state else 0


__all__ = ["EMA"]
