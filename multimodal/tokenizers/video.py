"""Video tokenizer: clips -> backbone tokens with (t, h, w) positions, and generated tokens -> clips.

Steps (the image tokenizer's, per frame, plus time):

1. frames come from a file (:func:`multimodal.io.iter_frames` / :func:`~multimodal.io.read_video`:
   every frame, ``num_frames`` spread uniformly, or frames at ``fps``), an array ``(T, H, W, 3)``,
   a tensor ``(T, 3, H, W)`` or a list of frames; each is resized to cover ``resolution`` and centre
   cropped as it arrives, so a long high-resolution file is never held whole;
2. a clip of ``T`` frames is padded to ``1 + 4k`` by repeating its last frame (``num_frames`` records
   ``T``, and :meth:`VideoTokenizer.decode` trims back to it);
3. chunked causal encoding to ``(B, C, 1 + k, H/8, W/8)``, standardised latents, patchified into
   ``(1 + k) * (H/8/p) * (W/8/p)`` tokens with positions ``(t, row, col)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.image import ImageTokenizer
from multimodal.tokenizers.patchify import VisualTokens, patchify, unpatchify
from multimodal.tokenizers.preprocess import normalize_frames, resize_center_crop, to_uint8_frames


def padded_length(num_frames: int) -> int:
    """Smallest 1 + 4k >= num_frames."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    return 1 + 4 * ((num_frames - 1 + 3) // 4)


class VideoTokenizer(ImageTokenizer):
    """Videos <-> tokens through a :class:`CausalAutoencoder`; a one-frame video equals an image.

    Args:
        autoencoder: the pixel autoencoder (default: the shipped shapes-world weights).
        resolution: frame size, int or (height, width), multiples of ``8 * patch_size``.
        patch_size: latent positions per token side.
        num_frames: when reading files, sample this many frames uniformly (None: all, or by ``fps``).
        fps: when reading files, sample at this frame rate (None: the file's frames).
    """

    def __init__(
        self,
        autoencoder: CausalAutoencoder | None = None,
        resolution: int | tuple[int, int] = 64,
        patch_size: int = 2,
        num_frames: int | None = None,
        fps: float | None = None,
    ) -> None:
        super().__init__(autoencoder, resolution, patch_size)
        self.num_frames = num_frames
        self.fps = fps

    def video_grid(self, num_frames: int) -> tuple[int, int, int]:
        """(1 + k, rows, cols) token grid of a clip of ``num_frames`` frames (after padding)."""
        _, gh, gw = self.grid
        return self.autoencoder.config.latent_frames(padded_length(num_frames)), gh, gw

    def load_frames(self, video) -> torch.Tensor:
        """One video (path, (T, H, W, 3) uint8 array, (T, 3, H, W) tensor, or list of frames) ->
        float (T, 3, H, W) in [-1, 1] at the tokenizer's resolution."""
        if isinstance(video, (str, os.PathLike)):
            from multimodal.io import iter_frames, read_video

            if self.num_frames is not None and self.fps is None:
                frames = read_video(video, num_frames=self.num_frames)  # only the sampled frames are kept
                return normalize_frames(list(frames), self.resolution)
            out = []
            for frame in iter_frames(video, fps=self.fps):  # resized as they arrive
                out.append(normalize_frames([frame], self.resolution))
                if self.num_frames is not None and len(out) == self.num_frames:
                    break
            return torch.cat(out, dim=0)
        if isinstance(video, torch.Tensor) and video.ndim == 4 and video.is_floating_point() and video.min() < 0:
            # already normalised (T, 3, H, W) in [-1, 1]: only resize/crop
            return resize_center_crop(video.float(), self.resolution).clamp(-1, 1)
        return normalize_frames(list(video), self.resolution)

    def preprocess(self, videos) -> tuple[torch.Tensor, int]:
        """Videos (one or a list of equal length) -> ((B, 3, 1 + 4k, H, W) in [-1, 1], frames before padding)."""
        single = isinstance(videos, (str, os.PathLike, np.ndarray)) or (isinstance(videos, torch.Tensor) and videos.ndim == 4)
        clips = [self.load_frames(v) for v in ([videos] if single else videos)]
        lengths = {c.shape[0] for c in clips}
        if len(lengths) != 1:
            raise ValueError(f"videos in a batch must have the same number of frames, got {sorted(lengths)}")
        t = lengths.pop()
        target = padded_length(t)
        x = torch.stack(clips, dim=0)  # (B, T, 3, H, W)
        if target > t:
            x = torch.cat([x, x[:, -1:].expand(-1, target - t, -1, -1, -1)], dim=1)  # repeat the last frame
        return x.permute(0, 2, 1, 3, 4).contiguous(), t  # (B, 3, T, H, W)

    @torch.no_grad()
    def encode(self, videos, sample: bool = False, generator: torch.Generator | None = None) -> VisualTokens:
        """Videos -> :class:`VisualTokens` with tokens (B, N, C*p*p), N = (1 + k) * rows * cols."""
        ae = self.autoencoder
        param = next(ae.parameters())
        x, t = self.preprocess(videos)
        z = ae.normalize_latents(ae.encode(x.to(param.device, param.dtype), sample=sample, generator=generator))
        tokens, positions = patchify(z, self.patch_size)  # (B, N, D), (N, 3)
        return VisualTokens(tokens, positions, self.video_grid(t), self.patch_size, num_frames=t)

    def tokens_to_latents(self, tokens: VisualTokens | torch.Tensor, latent_frames: int | None = None) -> torch.Tensor:
        """Tokens (B, N, C*p*p) -> raw latents (B, C, T', h, w); ``latent_frames`` is needed for bare tensors."""
        if isinstance(tokens, VisualTokens):
            grid, t = tokens.grid, tokens.tokens
        else:
            _, gh, gw = self.grid
            frames = latent_frames if latent_frames is not None else tokens.shape[1] // (gh * gw)
            grid, t = (frames, gh, gw), tokens
        return self.autoencoder.denormalize_latents(unpatchify(t, grid, self.patch_size))

    @torch.no_grad()
    def decode(self, tokens: VisualTokens | torch.Tensor, num_frames: int | None = None, output_type: str = "np"):
        """Tokens -> videos: ``"np"`` uint8 (B, T, H, W, 3) or ``"pt"`` float (B, 3, T, H, W) in [-1, 1].

        ``num_frames`` (default: the encoded clip's) trims the ``1 + 4k`` decoded frames.
        """
        pixels = self.autoencoder.decode(self.tokens_to_latents(tokens))  # (B, 3, 1 + 4k, H, W)
        if num_frames is None and isinstance(tokens, VisualTokens):
            num_frames = tokens.num_frames
        if num_frames is not None:
            pixels = pixels[:, :, :num_frames]
        if output_type == "pt":
            return pixels
        if output_type == "np":
            return to_uint8_frames(pixels.transpose(1, 2))  # (B, T, 3, H, W) -> (B, T, H, W, 3)
        raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")

    def reconstruct(self, videos: Sequence) -> np.ndarray:
        """Encode then decode: uint8 (B, T, H, W, 3)."""
        return self.decode(self.encode(videos))
