"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

    lr(s) = peak * (s + 1) / warmup                                         s < warmup
    lr(s) = peak * (r + (1 - r) * (1 + cos(pi * p)) / 2),  p = (s - warmup) / (total - warmup)   otherwise

with r = `min_lr_ratio`; p is clamped to 1, so steps past `total` stay at the floor. `s` is the index of the
optimizer update about to be taken (0-based), so the first update already uses a non-zero rate.

The schedule is a pure function of the step: its checkpoint state is the step alone, which keeps resume exact and
the state JSON. Parameter groups may carry an `lr_scale` (Muon groups do); the group's rate is `lr(s) * lr_scale`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class WarmupCosine:
    """Warm-up + cosine learning-rate schedule over `total_steps` optimizer updates."""

    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.1
    step: int = 0                      # the next update's index; advanced by `advance`

    def __post_init__(self) -> None:
        if self.peak_lr <= 0:
            raise ValueError(f"peak_lr must be > 0, got {self.peak_lr}")
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be in [0, total_steps={self.total_steps}]")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.step < 0:
            raise ValueError(f"step must be >= 0, got {self.step}")

    def lr_at(self, step: int) -> float:
        """The learning rate of update `step` (0-based)."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.peak_lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)

    @property
    def lr(self) -> float:
        """The rate of the next update."""
        return self.lr_at(self.step)

    def apply(self, optimizer: torch.optim.Optimizer) -> float:
        """Set every parameter group's `lr` for the next update; returns the base rate."""
        lr = self.lr
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def advance(self) -> None:
        """Call once after each optimizer update."""
        self.step += 1

    # ---------------------------------------------------------------------------------------------- state (JSON)
    def state_dict(self) -> dict[str, Any]:
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "min_lr_ratio": self.min_lr_ratio, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step; the shape of the schedule must match the checkpoint's (a changed recipe is an error)."""
        for key in ("peak_lr", "warmup_steps", "total_steps", "min_lr_ratio"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"schedule {key} differs from the checkpoint's: {getattr(self, key)} vs {state[key]}; "
                                 f"resume with the run's own config")
        self.step = int(state["step"])
