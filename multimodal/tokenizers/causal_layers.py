"""Causal (2+1)D building blocks of the video autoencoder.

Every block maps a clip tensor ``(B, C, T, H, W)`` to ``(B, C', T', H', W')`` and never lets frame ``t``
see a frame after ``t``. Spatial work is done frame by frame (2D convolutions and a per-frame GroupNorm),
temporal work by causal 1D convolutions over time, left-padded by repeating the first frame (as in the
causal 3D convolutions of MAGVIT-v2, arXiv 2310.05737, and CogVideoX). Temporal down/up-sampling keeps
the first frame alone, so ``1 + 2k`` frames become ``1 + k`` and back.

Streaming: inside :func:`streaming`, each :class:`CausalTemporalConv` keeps the last ``kernel - 1``
input frames of the previous chunk, and :class:`TemporalDownsample` / :class:`TemporalUpsample` treat
only the first chunk as holding the clip's first frame. Feeding a clip chunk by chunk (first chunk one
frame, then chunks of an even number of frames) then gives the same result as feeding it whole, with
memory bounded by the chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _frames_as_batch(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), t


def _batch_as_frames(x: torch.Tensor, t: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W)."""
    bt, c, h, w = x.shape
    return x.reshape(bt // t, t, c, h, w).permute(0, 2, 1, 3, 4)


class StreamState:
    """Mixin: a module that carries state between chunks while ``streaming`` is on."""

    def reset_stream(self, enabled: bool) -> None:
        self.stream_enabled = enabled
        self.stream_started = False
        self.cache: torch.Tensor | None = None


@contextlib.contextmanager
def streaming(module: nn.Module) -> Iterator[None]:
    """Run ``module`` chunk by chunk: causal state is carried between calls, then dropped on exit."""
    stateful = [m for m in module.modules() if isinstance(m, StreamState)]
    for m in stateful:
        m.reset_stream(True)
    try:
        yield
    finally:
        for m in stateful:
            m.reset_stream(False)


class SpatialConv(nn.Module):
    """A 2D convolution applied to every frame: (B, Cin, T, H, W) -> (B, Cout, T, H/stride, W/stride)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, t = _frames_as_batch(x)
        return _batch_as_frames(self.conv(y), t)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (C, H, W) of each frame separately, so statistics never mix frames (causal)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        y, t = _frames_as_batch(x)
        return _batch_as_frames(super().forward(y), t)


class CausalTemporalConv(StreamState, nn.Module):
    """Causal convolution over time with a 1x1 spatial footprint.

    (B, Cin, T, H, W) -> (B, Cout, T, H, W); output frame t depends on input frames t-k+1 .. t, with
    frames before the first replaced by copies of the first frame.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv3d(cin, cout, (kernel, 1, 1))
        self.reset_stream(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.kernel - 1
        if self.stream_enabled and self.cache is not None:
            xp = torch.cat([self.cache, x], dim=2)  # (B, C, pad + T, H, W)
        else:
            xp = torch.cat([x[:, :, :1].expand(-1, -1, pad, -1, -1), x], dim=2) if pad else x
        if self.stream_enabled and pad:
            self.cache = xp[:, :, -pad:].detach()
        return self.conv(xp)


class ResBlock(nn.Module):
    """Pre-norm residual block: spatial 3x3 conv, then causal temporal conv. (B, C, T, H, W) -> same."""

    def __init__(self, channels: int, groups: int, temporal_kernel: int) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, channels)
        self.spatial = SpatialConv(channels, channels, 3)
        self.norm2 = FrameGroupNorm(groups, channels)
        self.temporal = CausalTemporalConv(channels, channels, temporal_kernel)
        nn.init.zeros_(self.temporal.conv.weight)
        nn.init.zeros_(self.temporal.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.spatial(F.silu(self.norm1(x)))
        h = self.temporal(F.silu(self.norm2(h)))
        return x + h


class TemporalDownsample(StreamState, nn.Module):
    """Halve the frame rate, keeping the first frame alone: (B, C, 1 + 2k, H, W) -> (B, C, 1 + k, H, W).

    Frames (1, 2), (3, 4), ... are stacked on channels and mixed by a linear map; the first frame is
    stacked with itself. In a stream, only the first chunk holds the first frame; later chunks must
    have an even number of frames.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Conv3d(2 * channels, channels, 1)
        self.reset_stream(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        holds_first = not (self.stream_enabled and self.stream_started)
        self.stream_started = True
        parts = []
        if holds_first:
            parts.append(torch.cat([x[:, :, :1], x[:, :, :1]], dim=1))  # (B, 2C, 1, H, W)
            x = x[:, :, 1:]
        rest = x.shape[2]
        if rest % 2:
            raise ValueError(f"TemporalDownsample needs 1 + 2k frames (or an even chunk), got {t}")
        if rest:
            # (B, C, 2m, H, W) -> (B, C, m, 2, H, W) -> (B, 2, C, m, H, W) -> (B, 2C, m, H, W)
            pairs = x.reshape(b, c, rest // 2, 2, h, w).permute(0, 3, 1, 2, 4, 5).reshape(b, 2 * c, rest // 2, h, w)
            parts.append(pairs)
        return self.mix(torch.cat(parts, dim=2))


class TemporalUpsample(StreamState, nn.Module):
    """Double the frame rate, keeping the first frame alone: (B, C, 1 + k, H, W) -> (B, C, 1 + 2k, H, W).

    A linear map gives each frame two output frames; the first frame keeps only the second of its two.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.expand = nn.Conv3d(channels, 2 * channels, 1)
        self.reset_stream(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        holds_first = not (self.stream_enabled and self.stream_started)
        self.stream_started = True
        y = self.expand(x)  # (B, 2C, T, H, W)
        # (B, 2C, T, H, W) -> (B, 2, C, T, H, W) -> (B, C, T, 2, H, W) -> (B, C, 2T, H, W)
        y = y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return y[:, :, 1:] if holds_first else y


class SpatialDownsample(nn.Module):
    """Stride-2 3x3 convolution per frame: (B, Cin, T, H, W) -> (B, Cout, T, H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = SpatialConv(cin, cout, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialUpsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution per frame: (B, Cin, T, H, W) -> (B, Cout, T, 2H, 2W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, t = _frames_as_batch(x)
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        return _batch_as_frames(self.conv(y), t)


class PixelUnshuffle3d(nn.Module):
    """Space-to-depth per frame: (B, C, T, H, W) -> (B, C*r*r, T, H/r, W/r)."""

    def __init__(self, r: int) -> None:
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, t = _frames_as_batch(x)
        return _batch_as_frames(F.pixel_unshuffle(y, self.r), t)


class PixelShuffle3d(nn.Module):
    """Depth-to-space per frame: (B, C*r*r, T, H, W) -> (B, C, T, H*r, W*r)."""

    def __init__(self, r: int) -> None:
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, t = _frames_as_batch(x)
        return _batch_as_frames(F.pixel_shuffle(y, self.r), t)
