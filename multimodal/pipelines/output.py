"""Pipeline results: result dataclasses, pixel post-processing per `output_type`, and writing videos with PyAV.

The results here are plain dataclasses, so the pipelines' logic runs without diffusers (the `multimodal` command);
the public pipelines return them as diffusers `BaseOutput`s (`ImagePipelineOutput`, ... in base.py).

The formats follow diffusers' `VaeImageProcessor` / `VideoProcessor` (reference/multimodal.md §4):

| output_type | images                                  | videos                                          |
|-------------|-----------------------------------------|-------------------------------------------------|
| "pil"       | list of B `PIL.Image`                   | list of B lists of F `PIL.Image`                |
| "np"        | float32 [B, H, W, 3] in [0, 1]          | float32 [B, F, H, W, 3] in [0, 1]               |
| "pt"        | float [B, 3, H, W] in [0, 1]            | float [B, F, 3, H, W] in [0, 1]                 |
| "latent"    | normalised latents [B, C, 1, h, w]      | normalised latents [B, C, T', h, w]             |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..io import write_video

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class ImageResult:
    """images: see the module table. With `num_candidates` K > 1 (rerank.py): scores [M, K] float32, each draft's
    log-likelihood of its prompt, best first; candidate_index [M, K] long, the draw each score belongs to; with
    `return_all_candidates=True`, images holds all M * K drafts in that order (output-major)."""

    images: Any
    scores: torch.Tensor | None = None
    candidate_index: torch.Tensor | None = None


@dataclass
class VideoResult:
    """frames: see the module table; scores and candidate_index as in `ImageResult`."""

    frames: Any
    scores: torch.Tensor | None = None
    candidate_index: torch.Tensor | None = None


@dataclass
class TextResult:
    """text: one string per input; tokens: the generated ids; finish_reason: "eos", "stop_token", "stop_string" or
    "length" per input."""

    text: list[str]
    tokens: list[list[int]]
    finish_reason: list[str]


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


def postprocess_images(pixels: torch.Tensor, output_type: str) -> Any:
    """pixels [B, 3, H, W] in [-1, 1] -> images in `output_type` format."""
    images = (pixels.float() / 2 + 0.5).clamp(0, 1)                                    # [B, 3, H, W]
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).cpu().numpy()                                   # [B, H, W, 3]
    if output_type == "np":
        return array
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


def postprocess_video(pixels: torch.Tensor, output_type: str) -> Any:
    """pixels [B, 3, F, H, W] in [-1, 1] -> videos in `output_type` format."""
    frames = (pixels.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)            # [B, F, 3, H, W]
    if output_type == "pt":
        return frames
    array = frames.permute(0, 1, 3, 4, 2).cpu().numpy()                                # [B, F, H, W, 3]
    if output_type == "np":
        return array
    return [[Image.fromarray((f * 255).round().astype(np.uint8)) for f in video] for video in array]


def _frames_uint8(frames: Any) -> np.ndarray:
    """One video as PIL list / float [0, 1] or uint8 array [F, H, W, 3] / tensor [F, 3, H, W] -> uint8 [F, H, W, 3]."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().float().cpu()
        if frames.ndim == 4 and frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
            frames = frames.permute(0, 2, 3, 1)
        frames = frames.numpy()
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else np.asarray(f)
                           for f in frames])
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    return frames


def export_to_video(frames: Any, output_video_path: str | os.PathLike, fps: float = 8.0) -> str:
    """Write one video (the per-sample entry of a `VideoPipelineOutput.frames`) as H.264 mp4 with PyAV, atomically.

    Accepts a list of PIL images, a float [0, 1] or uint8 array [F, H, W, 3], or a tensor [F, 3, H, W]; returns the
    path (diffusers' `export_to_video` signature)."""
    path = Path(output_video_path)
    write_video(path, _frames_uint8(frames), fps=fps)
    return str(path)
