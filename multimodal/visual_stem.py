"""A convolutional stem over the autoencoder's latent grid: visual features the backbone's patch projection misses.

The backbone reads one visual token per `patch_size` x `patch_size` latent patch through a linear map
(`UnifiedModel.visual_in`). A linear map of a patch does not share weights across positions inside it or across
patches, so a small object (a 12-pixel digit covers 1.5 x 1.5 latent cells) that moves by a few pixels lands on other
inputs of other tokens, and the backbone must learn each glyph at every offset. On the built-in model that is the
commonest caption error (a digit read as another digit: 23% of test image captions, 33% of clip captions;
docs/quality.md), while the autoencoder's latents hold the digit (its reconstructions are read right by the world's
scorer 95% of the time, and a two-layer convolution over the latents, trained alone on 1.8k single digits, reads 87%
of the validation split's unseen glyphs, where a two-layer MLP over the whole grid reads 25%:
`benchmarks/digit_probe.py`).

`VisualStem` adds what a convolution gives: per latent frame, two 3 x 3 convolutions with GELU ([B, C, T', h, w] ->
[B, width, T', h, w], a 5 x 5-cell receptive field, weights shared across positions), then the same patch cut as the
plain projection and a linear map to the backbone width, whose output is *added* to the plain projection's. That map
starts at zero, so a stem added to a trained model (`TrainConfig.visual_stem` with `init_from`) leaves its function
unchanged until training moves it (adaLN-Zero's trick, Peebles & Xie, arXiv 2212.09748).

    stem = VisualStem(latent_channels=16, width=64, patch_size=2, dim=256)
    stem(latents)          # [B, 16, T', 8, 8] -> [B, T' * 16, 256], row-major (t, row, column), zero at init
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizers.patchify import patchify


class VisualStem(nn.Module):
    """Two 3 x 3 convolutions per latent frame, patchified and projected to the backbone width (zero at init)."""

    def __init__(self, latent_channels: int, width: int, patch_size: int, dim: int) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"visual stem width must be > 0, got {width}")
        self.patch_size = patch_size
        self.conv1 = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Linear(width * patch_size * patch_size, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def features(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, T', h, w] -> [B, width, T', h, w]: the convolutions, frame by frame."""
        b, c, t, h, w = latents.shape
        x = latents.transpose(1, 2).reshape(b * t, c, h, w)                              # [B*T', C, h, w]
        x = F.gelu(self.conv2(F.gelu(self.conv1(x))))                                    # [B*T', W, h, w]
        return x.reshape(b, t, -1, h, w).transpose(1, 2)                                 # [B, W, T', h, w]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, T', h, w] -> [B, T' * (h/p) * (w/p), dim], the tokens' order of `patchify`."""
        return self.out(patchify(self.features(latents), self.patch_size)[0])
