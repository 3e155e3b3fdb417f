"""Parameter counts of a config, built on the `meta` device (no memory is allocated).

Conventions (those of DeepSeek's reports, which reproduce their published figures):
- `total` counts every parameter of the main model: embedding, all layers with all routed experts, final norm
  and mHC collapse, output head. MTP modules are reported apart (`mtp`) and not included, as DeepSeek's "671B"
  excludes V3's 14B MTP module.
- `activated` counts what one token uses: everything in `total` except the routed experts it is not sent to
  (it uses `num_experts_per_tok` of `n_routed_experts` in each MoE layer) and except the embedding table
  (a lookup reads one row, no matrix product).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import BackboneConfig


@dataclass
class ParameterCount:
    total: int
    activated: int
    embedding: int
    head: int
    routed_experts: int
    mtp: int

    def summary(self) -> str:
        return (f"total {_human(self.total)}, activated {_human(self.activated)} (embedding {_human(self.embedding)}, "
                f"head {_human(self.head)}, routed experts {_human(self.routed_experts)}; "
                f"MTP {_human(self.mtp)} not included)")


def _human(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.{3 if unit == 'T' else 1}f}{unit}"
    return str(n)


def count_parameters(cfg: BackboneConfig) -> ParameterCount:
    from .transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    k, e = cfg.moe.num_experts_per_tok, cfg.moe.n_routed_experts
    total = activated = embedding = head = routed = mtp = 0
    for name, p in model.named_parameters():
        n = p.numel()
        if name.startswith("mtp."):
            mtp += n
            continue
        total += n
        if name == "embed.weight":
            embedding += n
        elif name.startswith("layers.") and ".ffn.experts." in name:
            routed += n
            activated += n * k // e
        else:
            head += n if name == "head.weight" else 0
            activated += n
    return ParameterCount(total, activated, embedding, head, routed, mtp)
