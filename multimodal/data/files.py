"""Minimal image and video files for the world: PNG with Pillow, mp4 (H.264, yuv420p) with PyAV.

Kept local on purpose and small; once ``multimodal.io`` (media I/O) lands, these readers and
writers should defer to it. Frames are uint8 arrays of shape (T, H, W, 3) in RGB.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


class MediaError(ValueError):
    """A media file that cannot be read or written; the message names the file."""


def write_png(path: str | os.PathLike, frame: np.ndarray) -> None:
    """Write one (H, W, 3) uint8 frame as PNG."""
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), mode="RGB").save(path, format="PNG")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as frames of shape (1, H, W, 3), uint8 RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)[None].copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"cannot read image {os.fspath(path)}: {exc}") from exc


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 8, crf: int = 18) -> None:
    """Encode (T, H, W, 3) uint8 frames as an H.264 (yuv420p) mp4; H and W must be even."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"frames for {os.fspath(path)} must be (T, H, W, 3), got {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise MediaError(f"yuv420p needs even frame sizes, got {w}x{h} for {os.fspath(path)}")
    tmp = Path(f"{os.fspath(path)}.tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video file: (T, H, W, 3) uint8 RGB."""
    import av

    try:
        with av.open(os.fspath(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(f"cannot read video {os.fspath(path)}: {exc}") from exc
    if not frames:
        raise MediaError(f"cannot read video {os.fspath(path)}: no frames")
    return np.stack(frames)


def read_media(path: str | os.PathLike) -> np.ndarray:
    """Read an image (T = 1) or a video by its suffix: (T, H, W, 3) uint8 RGB."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return read_video(path)
    if suffix in IMAGE_SUFFIXES:
        return read_image(path)
    raise MediaError(f"unknown media type {suffix!r} for {os.fspath(path)}")


def write_media(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> None:
    """Write one frame as PNG or several as mp4, by the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        if len(frames) != 1:
            raise MediaError(f"a PNG holds one frame, got {len(frames)} for {os.fspath(path)}")
        write_png(path, frames[0])
    elif suffix == ".mp4":
        write_mp4(path, frames, fps=fps)
    else:
        raise MediaError(f"can only write .png or .mp4, not {os.fspath(path)}")


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
                raise MediaError(f"{os.fspath(path)} line {n}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise MediaError(f"{os.fspath(path)} line {n}: expected a JSON object")
            rows.append(row)
    return rows


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write rows as JSON lines, atomically (temporary name, then rename)."""
    tmp = Path(f"{os.fspath(path)}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
