"""Pixels of any size and type -> the autoencoder's input: resize, centre crop, normalise.

Resizing keeps the aspect ratio: the frame is scaled (bilinear, antialiased) so that it *covers* the
target size, then the overflow is cut equally from both sides (centre crop). A 1920x1080 frame to
64x64 is scaled to 114x64, then columns 25..88 are kept. Nothing is stretched or letterboxed.

Accepted frames: ``(H, W, 3)`` / ``(H, W, 4)`` / ``(H, W)`` uint8 arrays, PIL images, file paths
(read with :func:`multimodal.io.read_image`), and torch tensors ``(3, H, W)`` (uint8 0..255, or
float in [0, 1]). Normalised pixels are float ``(3, H, W)`` in [-1, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def as_uint8_tensor(frame) -> torch.Tensor:
    """One frame of any accepted type -> (3, H, W) uint8 tensor."""
    if isinstance(frame, (str, os.PathLike)):
        from multimodal.io import read_image

        frame = read_image(frame)
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    if isinstance(frame, np.ndarray):
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        if frame.ndim != 3 or frame.shape[2] not in (3, 4):
            raise ValueError(f"an image array must be (H, W, 3), got {frame.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {frame.dtype}")
        return torch.from_numpy(np.array(frame[..., :3], copy=True)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if isinstance(frame, torch.Tensor):
        if frame.ndim != 3 or frame.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W), got {tuple(frame.shape)}")
        if frame.dtype == torch.uint8:
            return frame
        if frame.is_floating_point():
            return (frame.clamp(0, 1) * 255).round().to(torch.uint8)
        raise ValueError(f"image tensors must be uint8 or float, got {frame.dtype}")
    raise TypeError(f"cannot use {type(frame).__name__} as an image")


def cover_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """Smallest (h, w) with the input's aspect ratio that covers ``target`` (th, tw)."""
    th, tw = target
    scale = max(th / height, tw / width)
    return max(th, round(height * scale)), max(tw, round(width * scale))


def resize_center_crop(frames: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) float frames -> (N, 3, th, tw): scale to cover, then centre crop."""
    _, _, h, w = frames.shape
    th, tw = target
    if (h, w) != (th, tw):
        nh, nw = cover_size(h, w, target)
        if (nh, nw) != (h, w):
            frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - th) // 2, (nw - tw) // 2
        frames = frames[:, :, top : top + th, left : left + tw]
    return frames


def normalize_frames(frames: Sequence, target: tuple[int, int]) -> torch.Tensor:
    """A sequence of frames (any accepted type, any size) -> float (N, 3, th, tw) in [-1, 1]."""
    if len(frames) == 0:
        raise ValueError("no frames given")
    out = []
    for frame in frames:
        x = as_uint8_tensor(frame).float().unsqueeze(0)  # (1, 3, H, W)
        out.append(resize_center_crop(x, target))
    pixels = torch.cat(out, dim=0)  # (N, 3, th, tw) in 0..255
    return (pixels / 127.5 - 1.0).clamp(-1.0, 1.0)


def to_uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """Float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
    x = ((pixels.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()
