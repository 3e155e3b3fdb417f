"""The video head: the flow transformer over a clip's latent grid, with spatio-temporal positions.

A clip of 1 + 4k frames is 1 + k latent frames [B, C, 1 + k, H/8, W/8]. Every latent patch carries (time, row, column)
position features, and self-attention runs jointly over all frames, so motion is denoised as one object rather than
frame by frame (the Show-o2 flow head; reference/multimodal.md §6).
"""

from __future__ import annotations

from .flow import FlowTransformer
from .image import check_pixel_size


def latent_frames(num_frames: int, temporal_compression: int) -> int:
    """Pixel frames 1 + r*k -> latent frames 1 + k; ValueError for other counts."""
    if num_frames < 1 or (num_frames - 1) % temporal_compression:
        raise ValueError(f"num_frames must be 1 + {temporal_compression}k (1, {1 + temporal_compression}, "
                         f"{1 + 2 * temporal_compression}, ...), got {num_frames}")
    return 1 + (num_frames - 1) // temporal_compression


class VideoHead(FlowTransformer):
    """Flow head for clips: latents [B, C, T', h, w] (T' <= max_latent_frames) -> velocity of the same shape."""

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int, temporal_compression: int,
                     spatial_compression: int) -> tuple[int, ...]:
        """(B, C, 1 + (F - 1)/r, H/s, W/s) for clips of `num_frames` frames of `height` x `width` pixels."""
        t = latent_frames(num_frames, temporal_compression)
        if t > self.config.max_latent_frames:
            longest = 1 + (self.config.max_latent_frames - 1) * temporal_compression
            raise ValueError(f"num_frames={num_frames} is longer than this video head supports ({longest} frames)")
        h, w = check_pixel_size(height, width, spatial_compression, self.config.patch_size)
        return batch, self.config.latent_channels, t, h, w
