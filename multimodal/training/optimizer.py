"""The optimizers of every training loop: AdamW, or Muon for hidden weight matrices with AdamW for the rest.

Parameter groups (`param_groups`; every trainable parameter in exactly one, tested):

| group      | parameters                                                             | optimizer | lr                  | decay |
|------------|------------------------------------------------------------------------|-----------|---------------------|-------|
| `muon`     | matrices of the hidden layers: attention, expert (stacked [E, out, in]) | Muon      | `lr`                | wd    |
|            | and shared-expert weights, routers, mHC and MTP projections, heads'     |           |                     |       |
|            | projections (only with `muon=True`)                                     |           |                     |       |
| `decay`    | token embedding, LM head, the remaining >= 2-D tensors (a depthwise     | AdamW     | `lr`                | wd    |
|            | conv kernel [C, 1, k] is no matrix)                                     |           |                     |       |
| `no_decay` | vectors (norm gains, biases, mHC scalars, sinks) and norm gains stored | AdamW     | `lr`                | 0     |
|            | as matrices                                                            |           |                     |       |
| `engram`   | Engram memory tables (`*.engram.table.*`)                              | AdamW     | `lr * engram_lr_mult` | 0   |
| `<prefix>` | parameters under a name prefix of `lr_scales` (a new part's projection, | AdamW     | `lr * lr_scales[p]` | as    |
|            | say), taken before any rule above; split by decay like the rest        |           |                     | above |

As in Keller Jordan's Muon and Moonshot's Moonlight the embedding, LM head and vectors stay with AdamW; the Engram
tables get Adam with a 5x learning rate and no decay (Engram paper §4.1, ../shared/reference/mhc_engram.md §4.3).
A group's `lr_scale` (the Engram group's multiplier) is kept by `schedule.WarmupCosine.apply`.

Muon (momentum orthogonalised): with momentum buffer `M <- mu M + G` and Nesterov look-ahead `U = G + mu M`, the
update is `O = NS5(U)`, an approximation of the orthogonal factor `U (U^T U)^{-1/2}` by five Newton-Schulz
iterations of the quintic `X <- a X + b (X X^T) X + c (X X^T)^2 X` with (a, b, c) = (3.4445, -4.7750, 2.0315),
run in bf16 on a matrix scaled to unit spectral-norm bound. Like Moonlight (arXiv 2502.16982 §2.2) the update is
rescaled by `0.2 * sqrt(max(rows, cols))` so its RMS matches AdamW's, which lets both groups share one learning
rate and weight decay. Stacked tensors `[E, rows, cols]` are orthogonalised per matrix (batched), as V4 applies Muon
per expert matrix.
"""

from __future__ import annotations

import torch
from torch import nn

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise the last two dims of `g` [..., rows, cols]; returns the same shape and dtype."""
    a, b, c = NS_COEFFS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    transpose = x.shape[-2] > x.shape[-1]
    if transpose:                                   # iterate on the wide orientation: (X X^T) is the small Gram
        x = x.transpose(-2, -1)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.transpose(-2, -1)                                              # [..., r, r]
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transpose:
        x = x.transpose(-2, -1)
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon with decoupled weight decay and RMS-matched updates, for parameters of >= 2 dims.

    Group options: lr, momentum (0.95), nesterov (True), weight_decay, ns_steps (5)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"bad Muon settings: lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                             f"ns_steps={ns_steps}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim < 2:
                    raise ValueError(f"Muon updates matrices only; got a parameter of shape {tuple(p.shape)}")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                update = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                ortho = newton_schulz(update, group["ns_steps"])
                scale = 0.2 * max(p.shape[-2], p.shape[-1]) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(ortho, alpha=-group["lr"] * scale)
        return loss


def is_engram_table(name: str) -> bool:
    return ".engram.table." in f".{name}"


def _is_norm(name: str) -> bool:
    return any("norm" in part for part in name.split("."))


def _is_muon_param(name: str, p: nn.Parameter) -> bool:
    """Hidden matrices: >= 2 dims whose last two are both > 1, not the token embedding or the LM head (or their tied
    copies), not a norm gain."""
    leaf = name.split(".")[-1]
    return p.ndim >= 2 and min(p.shape[-2:]) > 1 and not _is_norm(name) and not (
        name.endswith("embed.weight") or name == "head.weight" or name.endswith(".head.weight") or leaf == "tid2eid")


def under(name: str, prefix: str) -> bool:
    """Whether parameter `name` is `prefix` or lies under it ("visual_stem.out" holds "visual_stem.out.weight")."""
    return name == prefix or name.startswith(prefix + ".")


def param_groups(model: nn.Module, weight_decay: float, muon: bool, engram_lr_mult: float = 5.0,
                 lr_scales: dict[str, float] | None = None) -> dict[str, list[dict]]:
    """{"adamw": [decay, no_decay, engram groups, then those of `lr_scales` (the non-empty ones)], "muon": [group] or
    []} of `model`'s trainable parameters, each once (module docstring). Groups carry their `name`; the Engram one and
    those of `lr_scales` (parameter-name prefix -> multiplier; AdamW, decay as for the rest) an `lr_scale`."""
    seen: set[int] = set()
    parts: dict[str, list[nn.Parameter]] = {"muon": [], "decay": [], "no_decay": [], "engram": []}
    scaled: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for prefix in lr_scales or {}:
        if not any(under(n, prefix) for n, p in model.named_parameters() if p.requires_grad):
            raise ValueError(f"lr_scale {prefix!r}: no trainable parameter of the model is named so")
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        prefix = next((k for k in lr_scales or {} if under(name, k)), None)
        if prefix is not None:
            scaled.setdefault((prefix, p.ndim >= 2 and not _is_norm(name)), []).append(p)
        elif is_engram_table(name):
            parts["engram"].append(p)
        elif muon and _is_muon_param(name, p):
            parts["muon"].append(p)
        elif p.ndim >= 2 and not _is_norm(name):
            parts["decay"].append(p)
        else:
            parts["no_decay"].append(p)
    adamw = [{"params": parts["decay"], "weight_decay": weight_decay, "name": "decay"},
             {"params": parts["no_decay"], "weight_decay": 0.0, "name": "no_decay"},
             {"params": parts["engram"], "weight_decay": 0.0, "name": "engram", "lr_scale": engram_lr_mult}]
    adamw += [{"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": float(lr_scales[prefix]),
               "name": f"{prefix} ({'decay' if decay else 'no_decay'})"} for (prefix, decay), ps in scaled.items()]
    return {"adamw": [g for g in adamw if g["params"]],
            "muon": [{"params": parts["muon"], "weight_decay": weight_decay, "name": "muon"}] if parts["muon"] else []}


class CombinedOptimizer:
    """Muon for hidden matrices and AdamW for the rest, driven as one optimizer (one `step`, one state dict).

    `param_groups` lists the children's groups (Muon's first), so a schedule setting `group["lr"]` reaches both."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.children = [muon, adamw]

    @property
    def param_groups(self) -> list[dict]:
        return self.children[0].param_groups + self.children[1].param_groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for child in self.children:
            child.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for child in self.children:
            child.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """Both children's states in one dict; AdamW's parameter indices follow Muon's, and every group is tagged
        with the optimizer it belongs to."""
        muon, adamw = (c.state_dict() for c in self.children)
        offset = sum(len(g["params"]) for g in muon["param_groups"])
        state = dict(muon["state"])
        state.update({i + offset: s for i, s in adamw["state"].items()})
        groups = [dict(g, optimizer="muon") for g in muon["param_groups"]]
        groups += [dict(g, optimizer="adamw", params=[i + offset for i in g["params"]]) for g in adamw["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Inverse of `state_dict`."""
        parts = []
        for kind in ("muon", "adamw"):
            mine = [dict(g) for g in state_dict["param_groups"] if g.get("optimizer") == kind]
            ids = {i for g in mine for i in g["params"]}
            base = min(ids) if ids else 0
            for g in mine:
                g.pop("optimizer")
                g["params"] = [i - base for i in g["params"]]
            parts.append({"state": {int(i) - base: s for i, s in state_dict["state"].items() if int(i) in ids},
                          "param_groups": mine})
        for child, part in zip(self.children, parts):
            child.load_state_dict(part)


def build_optimizer(model: nn.Module, name: str = "muon", lr: float = 3e-4, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                    engram_lr_mult: float = 5.0,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer | CombinedOptimizer:
    """AdamW (`name="adamw"`) or Muon + AdamW (`name="muon"`) over `model`'s trainable parameters (module docstring).
    Each group's `lr` starts at `lr * lr_scale`."""
    if name not in ("adamw", "muon"):
        raise ValueError(f"optimizer must be 'adamw' or 'muon', got {name!r}")
    for key, value in (("lr", lr), ("engram_lr_mult", engram_lr_mult)):
        if value <= 0:
            raise ValueError(f"{key} must be > 0, got {value}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    groups = param_groups(model, weight_decay, muon=name == "muon", engram_lr_mult=engram_lr_mult, lr_scales=lr_scales)
    if not groups["adamw"]:
        raise ValueError("the model has no trainable parameters outside Muon's matrices (no norm, bias or embedding)")
    for g in groups["adamw"]:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    params = [p for g in groups["adamw"] for p in g["params"]]
    fused = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)   # one kernel for all tensors
    adamw = torch.optim.AdamW(groups["adamw"], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                              fused=True if fused else None)
    if name == "adamw" or not groups["muon"]:
        return adamw
    return CombinedOptimizer(Muon(groups["muon"], lr=lr, weight_decay=weight_decay), adamw)
