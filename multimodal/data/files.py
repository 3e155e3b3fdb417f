"""Image and video files of the world, through ``multimodal.io``: PNG with Pillow, mp4 (H.264, yuv420p, CRF 18)
with PyAV, plus the JSON-lines caption files. Frames are uint8 arrays of shape (T, H, W, 3) in RGB (T = 1 for an
image); every failure is ``multimodal.io.MediaError`` naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from multimodal.io import MediaError
from multimodal.io import read_image as _read_image
from multimodal.io import read_video as _read_video
from multimodal.io import write_image, write_video
from multimodal.io.atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif")

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "MediaError", "read_image", "read_video", "read_media", "write_png",
           "write_mp4", "write_media", "mp4_round_trip", "read_jsonl", "write_jsonl"]


def write_png(path: str | os.PathLike, frame: np.ndarray) -> None:
    """Write one (H, W, 3) uint8 frame as PNG (atomically)."""
    write_image(path, np.ascontiguousarray(frame, dtype=np.uint8))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as frames of shape (1, H, W, 3), uint8 RGB (upright, alpha over black)."""
    return _read_image(path)[None]


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, crf: int = 18) -> None:
    """Encode (T, H, W, 3) uint8 frames as an H.264 (yuv420p) mp4, atomically; H and W must be even."""
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(path, f"frames must be (T, H, W, 3), got {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise MediaError(path, f"yuv420p needs even frame sizes, got {w}x{h}")
    write_video(path, frames, fps=fps, options={"crf": str(crf)})


def mp4_round_trip(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 frames as they come back from an H.264 yuv420p mp4 (``write_mp4`` then ``read_video``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        write_mp4(path, frames)
        return read_video(path)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video file: (T, H, W, 3) uint8 RGB (rotation metadata applied)."""
    return _read_video(path)


def read_media(path: str | os.PathLike) -> np.ndarray:
    """Read an image (T = 1) or a video by its suffix: (T, H, W, 3) uint8 RGB."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return read_video(path)
    if suffix in IMAGE_SUFFIXES:
        return read_image(path)
    raise MediaError(path, f"unknown media type {suffix!r}")


def write_media(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> None:
    """Write one frame as PNG or several as mp4, by the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        if len(frames) != 1:
            raise MediaError(path, f"a PNG holds one frame, got {len(frames)}")
        write_png(path, frames[0])
    elif suffix == ".mp4":
        write_mp4(path, frames, fps=fps)
    else:
        raise MediaError(path, "can only write .png or .mp4")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file; a bad line raises ``MediaError`` naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MediaError(path, f"line {n}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise MediaError(path, f"line {n}: expected a JSON object")
            rows.append(row)
    return rows


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows as JSON lines, atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
