"""Small backbones with every parameter random (so that sinks, slot biases and mHC terms all matter)."""

from __future__ import annotations

import torch

from multimodal.backbone.transformer import Transformer
from multimodal.config import BackboneConfig


def randomize_parameters_(model: torch.nn.Module, g: torch.Generator) -> None:
    """Matrices N(0, 0.2), norm gains U(0.5, 1.5), every other vector N(0, 0.5)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2, generator=g)
            elif "norm" in name:
                p.uniform_(0.5, 1.5, generator=g)
            else:
                p.normal_(0, 0.5, generator=g)


def random_model(cfg: BackboneConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    randomize_parameters_(model, torch.Generator().manual_seed(seed))
    return model.eval()
