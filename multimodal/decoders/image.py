"""The image head: the flow transformer over one latent frame.

An image is a one-frame clip for the causal autoencoder, so its latent is [B, C, 1, H/8, W/8]. The head denoises that
grid conditioned on the backbone's states at the image query tokens; positions are (row, column) features (time is
always 0).
"""

from __future__ import annotations

import torch

from .flow import FlowHeadConfig, FlowTransformer


def check_pixel_size(height: int, width: int, spatial_compression: int, patch_size: int) -> tuple[int, int]:
    """Pixel size -> latent (h, w); raises ValueError naming the sizes unless both divide evenly."""
    unit = spatial_compression * patch_size
    if height <= 0 or width <= 0 or height % unit or width % unit:
        raise ValueError(f"height and width must be positive multiples of {unit} "
                         f"(autoencoder stride {spatial_compression} x head patch {patch_size}), got {height}x{width}")
    return height // spatial_compression, width // spatial_compression


class ImageHead(FlowTransformer):
    """Flow head for images: latents [B, C, 1, h, w], timestep [B], cond [B, Nq, cond_dim] -> velocity [B, C, 1, h, w]."""

    def __init__(self, config: FlowHeadConfig) -> None:
        if config.max_latent_frames != 1:
            raise ValueError(f"the image head denoises one latent frame; got max_latent_frames="
                             f"{config.max_latent_frames}")
        super().__init__(config)

    def latent_shape(self, batch: int, height: int, width: int, spatial_compression: int) -> tuple[int, ...]:
        """(B, C, 1, H/s, W/s) for images of `height` x `width` pixels."""
        h, w = check_pixel_size(height, width, spatial_compression, self.config.patch_size)
        return batch, self.config.latent_channels, 1, h, w

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        if latents.ndim == 4:    # [B, C, h, w]: an image latent without its frame axis
            return super().forward(latents.unsqueeze(2), timestep, cond, cond_mask).squeeze(2)
        return super().forward(latents, timestep, cond, cond_mask)
