"""A user's own (image or video, caption) pairs, from a folder or a JSON-lines file, as a torch Dataset.

Accepted layouts:

- **a `.jsonl` file**, one object per line: `{"image": "cat.png", "caption": "..."}`,
  `{"video": "clips/run.mp4", "caption": "..."}`, or Hugging Face `imagefolder` style
  `{"file_name": "cat.png", "text": "..."}`. Relative paths are resolved against the file's folder.
- **a folder with `metadata.jsonl`** (or `captions.jsonl`): that file, as above.
- **a folder of media files with captions beside them**: `cat.png` + `cat.txt` (searched recursively).

Every file is checked when the dataset is built: it must exist, be non-empty and readable, and open as an image
(Pillow) or a video with a video stream (PyAV, first frame decoded). Pairs that fail — unreadable or corrupt media,
a missing caption, an empty caption, a bad JSON line — are skipped, listed in `dataset.skipped` as
(path or line, reason), and announced by one `UserDataWarning` with their count: never silently. A dataset with
no usable pair raises `ValueError` naming the path and the first reasons.

Items have the world's layout (`multimodal.data.datasets`): `pixels` float32 (3, T, size, size) in [0, 1]
(T = 1 for an image; for a video, `num_frames` frames sampled at `fps`, or the longest 1 + 4k prefix of a shorter
clip), `caption`, `kind` ("image" or "video") and `path`. Frames are centre-cropped to a square and resized
(bilinear). `caption(i)` returns a caption without decoding any pixels.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from multimodal.io import MediaError, probe_video, read_image, read_video
from multimodal.io.errors import check_media_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
METADATA_NAMES = ("metadata.jsonl", "captions.jsonl")
MEDIA_KEYS = ("image", "video", "file_name", "path", "file")
CAPTION_KEYS = ("caption", "text")


class UserDataWarning(UserWarning):
    """Some user pairs were skipped; the message gives the count and the first reasons."""


@dataclass(frozen=True)
class Pair:
    """One usable (media file, caption) pair."""

    path: Path
    caption: str
    kind: str                    # "image" or "video"


def kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def check_media(path: Path, kind: str) -> None:
    """Raise `MediaError` unless `path` opens as media of `kind` (cheap: header plus at most one frame)."""
    check_media_path(path)
    if kind == "image":
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as exc:  # Pillow raises many types (SyntaxError, struct.error, ...) for corrupt files
            raise MediaError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    else:
        probe_video(path)


def _entries_from_jsonl(path: Path, skipped: list[tuple[str, str]]) -> list[tuple[Path, str]]:
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped.append((where, f"not JSON ({exc.msg})"))
            continue
        media = next((row[k] for k in MEDIA_KEYS if isinstance(row, dict) and isinstance(row.get(k), str)), None)
        caption = next((row[k] for k in CAPTION_KEYS if isinstance(row, dict) and isinstance(row.get(k), str)), None)
        if media is None or caption is None:
            skipped.append((where, f"needs a media key {MEDIA_KEYS} and a caption key {CAPTION_KEYS}"))
            continue
        file = Path(media) if os.path.isabs(media) else path.parent / media
        entries.append((file, caption))
    return entries


def _entries_from_folder(root: Path, skipped: list[tuple[str, str]]) -> list[tuple[Path, str]]:
    entries = []
    for file in sorted(p for p in root.rglob("*") if p.is_file() and kind_of(p) is not None):
        side = file.with_suffix(".txt")
        if not side.is_file():
            skipped.append((str(file), f"no caption file {side.name}"))
            continue
        try:
            entries.append((file, side.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            skipped.append((str(file), f"caption file {side.name} unreadable ({exc})"))
    return entries


def scan_pairs(path: str | os.PathLike) -> tuple[list[Pair], list[tuple[str, str]]]:
    """(usable pairs, skipped (where, reason)) of a folder or .jsonl file; see the module docstring."""
    path = Path(path)
    skipped: list[tuple[str, str]] = []
    if path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise ValueError(f"user data must be a folder or a .jsonl file, got {path}")
        entries = _entries_from_jsonl(path, skipped)
    elif path.is_dir():
        meta = next((path / n for n in METADATA_NAMES if (path / n).is_file()), None)
        entries = _entries_from_jsonl(meta, skipped) if meta else _entries_from_folder(path, skipped)
    else:
        raise FileNotFoundError(f"user data not found: {path}")
    pairs = []
    for file, caption in entries:
        caption = " ".join(caption.split())
        kind = kind_of(file)
        if kind is None:
            skipped.append((str(file), f"unknown media extension {file.suffix!r}"))
        elif not caption:
            skipped.append((str(file), "empty caption"))
        else:
            try:
                check_media(file, kind)
            except MediaError as exc:
                skipped.append((str(file), exc.cause))
                continue
            pairs.append(Pair(file, caption, kind))
    return pairs, skipped


def square_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): centre crop to a square, bilinear resize."""
    h, w = frame.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = Image.fromarray(np.ascontiguousarray(frame[top:top + side, left:left + side]))
    if side != size:
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img)


class UserPairsDataset(Dataset):
    """(image or video, caption) pairs from a folder or .jsonl (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, size: int = 64, num_frames: int = 17, fps: float = 8.0) -> None:
        if size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {size}")
        if num_frames < 1 or (num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 1 + 4k (the autoencoder's clip length), got {num_frames}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.root, self.size, self.num_frames, self.fps = Path(path), size, num_frames, fps
        self.pairs, self.skipped = scan_pairs(path)
        if self.skipped:
            first = "; ".join(f"{w}: {r}" for w, r in self.skipped[:3])
            warnings.warn(f"{self.root}: skipped {len(self.skipped)} of {len(self.skipped) + len(self.pairs)} "
                          f"pairs that cannot be used (first: {first})", UserDataWarning, stacklevel=2)
        if not self.pairs:
            reasons = "; ".join(f"{w}: {r}" for w, r in self.skipped[:3]) or "no media files found"
            raise ValueError(f"{self.root}: no usable (media, caption) pairs ({reasons})")

    def __len__(self) -> int:
        return len(self.pairs)

    def caption(self, index: int) -> str:
        return self.pairs[index].caption

    def frames(self, index: int) -> np.ndarray:
        """(T, size, size, 3) uint8 frames of item `index`. Raises `MediaError` if the file fails to decode."""
        pair = self.pairs[index]
        if pair.kind == "image":
            raw = read_image(pair.path)[None]
        else:
            raw = read_video(pair.path, num_frames=self.num_frames, fps=self.fps)
            keep = 1 + 4 * ((len(raw) - 1) // 4)                  # the longest 1 + 4k prefix
            raw = raw[:keep]
        return np.stack([square_resize(f, self.size) for f in raw])

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        frames = self.frames(index)
        pixels = torch.from_numpy(frames.transpose(3, 0, 1, 2).astype(np.float32) / 255.0)   # (3, T, S, S)
        return {"pixels": pixels, "caption": pair.caption, "kind": pair.kind, "path": str(pair.path)}
