"""The optimiser split DeepSeek-V4 trains with: Muon for the 2-D weight matrices of the blocks, AdamW for the
rest, and the Engram memory tables on their own (Engram paper §4.1 / ../shared/reference/mhc_engram.md §4.3:
Adam with a 5x learning rate and no weight decay for the embedding tables).

Groups (every trainable parameter lands in exactly one; tested):

| group     | parameters                                                         | optimiser | lr            | decay |
|-----------|--------------------------------------------------------------------|-----------|---------------|-------|
| `muon`    | 2-D weights inside the blocks / MTP modules (attention, dense MLP,  | Muon      | `muon_lr`     | wd    |
|           | shared experts, router, indexer, Engram projections)               |           |               |       |
| `adamw`   | embedding, LM head, 3-D stacked routed experts*, mHC coefficients, | AdamW     | `lr`          | wd    |
|           | conv kernels and other >= 2-D tensors not above                    |           |               |       |
| `no_decay`| 1-D tensors: norms, biases, sinks, mHC scales                       | AdamW     | `lr`          | 0     |
| `engram`  | Engram embedding tables (`*.engram.table.*`)                        | AdamW     | `lr * engram_lr_mult` | 0 |

*`torch.optim.Muon` accepts only 2-D parameters, and our routed experts are stacked [E, out, in] tensors, so they
are trained by AdamW here (V4 applies Muon per expert matrix; a per-slice Muon is left to a later change).
Muon runs with `adjust_lr_fn="match_rms_adamw"`, so one learning-rate scale suits both optimisers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_engram_table(name: str) -> bool:
    return ".engram.table." in f".{name}"


def param_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters of `model` by group name (`muon`, `adamw`, `no_decay`, `engram`)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"muon": [], "adamw": [], "no_decay": [], "engram": []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        in_block = name.startswith(("layers.", "mtp."))
        if is_engram_table(name):
            groups["engram"].append((name, p))
        elif p.dim() == 2 and in_block and ".hc_" not in f".{name}":
            groups["muon"].append((name, p))
        elif p.dim() >= 2:
            groups["adamw"].append((name, p))
        else:
            groups["no_decay"].append((name, p))
    return groups


class HybridOptimizer(torch.optim.Optimizer):
    """Several optimisers stepped together. `optimizers` maps a group name to a torch optimiser."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        params = [p for opt in optimizers.values() for g in opt.param_groups for p in g["params"]]
        super().__init__([{"params": params}], {})
        self.param_groups = [g for opt in optimizers.values() for g in opt.param_groups]

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])


def build_optimizer(model: nn.Module, lr: float = 3e-4, muon_lr: float | None = None, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), engram_lr_mult: float = 5.0,
                    momentum: float = 0.95) -> HybridOptimizer:
    """Muon + AdamW (+ the Engram-table AdamW) over `model`'s trainable parameters (see the module docstring)."""
    for name, value in (("lr", lr), ("engram_lr_mult", engram_lr_mult)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    groups = param_groups(model)
    opts: dict[str, torch.optim.Optimizer] = {}
    if groups["muon"]:
        opts["muon"] = torch.optim.Muon([p for _, p in groups["muon"]], lr=muon_lr or lr, weight_decay=weight_decay,
                                        momentum=momentum, adjust_lr_fn="match_rms_adamw")
    adam = [{"params": [p for _, p in groups["adamw"]], "weight_decay": weight_decay, "lr": lr, "name": "adamw"},
            {"params": [p for _, p in groups["no_decay"]], "weight_decay": 0.0, "lr": lr, "name": "no_decay"},
            {"params": [p for _, p in groups["engram"]], "weight_decay": 0.0, "lr": lr * engram_lr_mult,
             "name": "engram"}]
    adam = [g for g in adam if g["params"]]
    if adam:
        opts["adamw"] = torch.optim.AdamW(adam, lr=lr, betas=betas)
    if not opts:
        raise ValueError("the model has no trainable parameters")
    return HybridOptimizer(opts)
