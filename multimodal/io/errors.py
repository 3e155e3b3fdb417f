"""The one exception raised for media that cannot be read or written."""

from __future__ import annotations

import os
from pathlib import Path


class MediaError(ValueError):
    """A media file cannot be used: missing, empty, not media, corrupt, truncated, audio-only, or
    without decodable frames.

    ``str(err)`` names the file and the cause in one line; ``err.path`` and ``err.cause`` hold them.
    A subclass of ``ValueError``, so the CLI reports it in one line.
    """

    def __init__(self, path: str | os.PathLike | None, cause: str) -> None:
        self.path = None if path is None else str(path)
        self.cause = cause
        where = f"'{self.path}'" if self.path is not None else "<stream>"
        super().__init__(f"cannot read media {where}: {cause}")


def check_media_path(path: str | os.PathLike) -> Path:
    """Raise :class:`MediaError` unless ``path`` is an existing, non-empty, readable regular file."""
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "no such file")
    if p.is_dir():
        raise MediaError(p, "is a directory, not a file")
    if not p.is_file():
        raise MediaError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise MediaError(p, "file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise MediaError(p, "permission denied")
    return p


def describe_ffmpeg_error(exc: BaseException) -> str:
    """A short cause from a PyAV/FFmpeg exception, without the file path repeated."""
    msg = getattr(exc, "strerror", None) or (exc.args[1] if len(getattr(exc, "args", ())) > 1 else None) or str(exc)
    msg = str(msg).strip().rstrip(".")
    known = {
        "Invalid data found when processing input": "not a readable media file, or its data is corrupt (invalid data found when processing input)",
        "End of file": "file ends before any media data (truncated)",
    }
    return known.get(msg, f"FFmpeg could not decode it ({type(exc).__name__}: {msg})")
