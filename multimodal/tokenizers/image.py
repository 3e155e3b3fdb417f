"""Image tokenizer: images -> backbone tokens with (t, h, w) positions, and generated tokens -> images.

An image is a one-frame clip of the causal autoencoder, so it becomes one latent frame. Steps:

1. resize to cover ``resolution`` and centre crop (aspect kept; :mod:`multimodal.tokenizers.preprocess`);
2. normalise to [-1, 1] and encode to latents ``(B, C, 1, H/8, W/8)``;
3. standardise latents with the autoencoder's stored per-channel statistics;
4. patchify into ``(H/8/p) * (W/8/p)`` tokens of ``C * p * p`` values, positions ``(0, row, col)``.

:meth:`ImageTokenizer.decode` is the exact inverse of steps 4 and 3, then decodes pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.patchify import VisualTokens, patchify, unpatchify
from multimodal.tokenizers.preprocess import normalize_frames, to_uint8_frames


def _size(resolution: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    return int(h), int(w)


class ImageTokenizer:
    """Images <-> tokens through a :class:`CausalAutoencoder`.

    Args:
        autoencoder: the pixel autoencoder (default: the shipped shapes-world weights).
        resolution: output size, an int or (height, width), multiples of ``8 * patch_size``.
        patch_size: latent positions per token side (p); token width is ``latent_channels * p * p``.
    """

    def __init__(self, autoencoder: CausalAutoencoder | None = None, resolution: int | tuple[int, int] = 64, patch_size: int = 2) -> None:
        self.autoencoder = autoencoder if autoencoder is not None else CausalAutoencoder.from_pretrained()
        self.resolution = _size(resolution)
        self.patch_size = int(patch_size)
        step = self.autoencoder.config.spatial_compression * self.patch_size
        if self.patch_size < 1 or any(r % step for r in self.resolution):
            raise ValueError(f"resolution {self.resolution} must be a multiple of 8 * patch_size = {step}")

    @property
    def token_dim(self) -> int:
        return self.autoencoder.config.latent_channels * self.patch_size**2

    @property
    def grid(self) -> tuple[int, int, int]:
        """(1, rows, cols) of the token grid of one image."""
        s = self.autoencoder.config.spatial_compression * self.patch_size
        return 1, self.resolution[0] // s, self.resolution[1] // s

    @property
    def num_tokens(self) -> int:
        return int(np.prod(self.grid))

    def preprocess(self, images) -> torch.Tensor:
        """Images (a single image or a list: arrays, PIL images, paths, tensors) -> (B, 3, 1, H, W) in [-1, 1]."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        pixels = normalize_frames(images, self.resolution)  # (B, 3, H, W)
        return pixels.unsqueeze(2)  # (B, 3, 1, H, W)

    @torch.no_grad()
    def encode(self, images, sample: bool = False, generator: torch.Generator | None = None) -> VisualTokens:
        """Images -> :class:`VisualTokens` with tokens (B, N, C*p*p) and positions (N, 3)."""
        ae = self.autoencoder
        param = next(ae.parameters())
        x = self.preprocess(images).to(param.device, param.dtype)
        z = ae.normalize_latents(ae.encode(x, sample=sample, generator=generator))  # (B, C, 1, h, w)
        tokens, positions = patchify(z, self.patch_size)
        return VisualTokens(tokens, positions, self.grid, self.patch_size, num_frames=1)

    def tokens_to_latents(self, tokens: VisualTokens | torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C*p*p) -> raw latents (B, C, 1, h, w) (un-standardised)."""
        t = tokens.tokens if isinstance(tokens, VisualTokens) else tokens
        return self.autoencoder.denormalize_latents(unpatchify(t, self.grid, self.patch_size))

    @torch.no_grad()
    def decode(self, tokens: VisualTokens | torch.Tensor, output_type: str = "np") -> np.ndarray | torch.Tensor:
        """Tokens -> images: ``"np"`` uint8 (B, H, W, 3), ``"pt"`` float (B, 3, H, W) in [-1, 1], or ``"pil"``."""
        pixels = self.autoencoder.decode(self.tokens_to_latents(tokens))[:, :, 0]  # (B, 3, H, W)
        if output_type == "pt":
            return pixels
        images = to_uint8_frames(pixels)
        if output_type == "np":
            return images
        if output_type == "pil":
            from PIL import Image

            return [Image.fromarray(im) for im in images]
        raise ValueError(f"output_type must be 'np', 'pt' or 'pil', got {output_type!r}")

    def reconstruct(self, images: Sequence) -> np.ndarray:
        """Encode then decode: uint8 (B, H, W, 3) at the tokenizer's resolution."""
        return self.decode(self.encode(images))
