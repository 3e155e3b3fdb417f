"""Writing video with PyAV: mp4 (H.264, yuv420p), webm (VP9), mkv (H.264), avi (MPEG-4 Part 2), and GIF
(each frame quantised by Pillow to its own adaptive 256-colour palette, which keeps flat colours exact;
GIF delays are whole centiseconds, so 8 fps is stored as 12 cs, 8.33 fps).

yuv420p needs even sizes: an odd width or height is padded by one column/row that repeats the edge
pixels, so nothing of the picture is cut (a 63x65 clip is stored as 64x66). Files are written to a
temporary name in the same folder and renamed when complete, so a failed write leaves no half file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from multimodal.io.atomic import _umask
from multimodal.io.errors import MediaError

# extension -> (PyAV codec, pixel format, codec options)
VIDEO_CODECS = {
    ".mp4": ("libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    ".mkv": ("libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    ".mov": ("libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    ".webm": ("libvpx-vp9", "yuv420p", {"crf": "24", "b": "0"}),
    ".avi": ("mpeg4", "yuv420p", {"qscale": "2"}),
}


def _as_uint8_frame(frame) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8/float array or PIL image -> (H, W, 3) uint8 RGB."""
    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"a frame must be (H, W, 3) RGB, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"float frames are ambiguous: convert to uint8 0..255 first (got {arr.dtype})")
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _palette_frame(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 -> ((H, W) palette indices, (256, 4) ARGB palette) for a pal8 frame."""
    img = Image.fromarray(frame).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    rgb = np.zeros((256, 3), dtype=np.uint8)
    pal = np.asarray(img.getpalette()[: 256 * 3], dtype=np.uint8).reshape(-1, 3)  # (n, 3)
    rgb[: len(pal)] = pal
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), rgb], axis=1)  # (256, 4): A, R, G, B
    return np.asarray(img, dtype=np.uint8), argb


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H + H % 2, W + W % 2, 3), repeating the last row/column."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


class VideoWriter:
    """Write frames one at a time: ``with VideoWriter("out.mp4", fps=8) as w: w.write(frame)``.

    The codec follows the extension (:data:`VIDEO_CODECS`, or ``.gif``). Frames are (H, W, 3) uint8;
    all must share the first frame's size.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 8.0, codec: str | None = None, options: dict | None = None) -> None:
        self.path = Path(path)
        self.ext = self.path.suffix.lower()
        if self.ext != ".gif" and self.ext not in VIDEO_CODECS:
            raise ValueError(f"cannot write {self.ext or 'files without an extension'}: use one of .gif, {', '.join(VIDEO_CODECS)}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fps
        self.codec, self.pix_fmt, default_options = VIDEO_CODECS.get(self.ext, ("gif", "pal8", {}))
        self.container_format = {".mkv": "matroska", ".webm": "webm", ".gif": "gif"}.get(self.ext)
        self.codec = codec or self.codec
        self.options = {**default_options, **(options or {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=self.path.stem + ".", suffix=".part" + self.ext, dir=self.path.parent)
        os.close(fd)
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def _start(self, h: int, w: int) -> None:
        import av  # PyAV loads where video is read or written, not on import
        self._size = (h, w)
        rate = Fraction(self.fps).limit_denominator(1001)
        self._container = av.open(self._tmp, mode="w", format=self.container_format)
        self._stream = self._container.add_stream(self.codec, rate=rate, options=self.options)
        self._stream.width, self._stream.height = w + w % 2, h + h % 2
        self._stream.pix_fmt = self.pix_fmt
        if self.ext == ".gif":  # GIF has no chroma subsampling: keep the true size
            self._stream.width, self._stream.height = w, h

    def write(self, frame) -> None:
        """Append one frame ((H, W, 3) uint8 RGB, a greyscale (H, W) array or a PIL image)."""
        import av  # PyAV loads where video is read or written, not on import
        arr = _as_uint8_frame(frame)
        if self._size is None:
            self._start(*arr.shape[:2])
        elif arr.shape[:2] != self._size:
            raise ValueError(f"frame {self.frames_written} is {arr.shape[1]}x{arr.shape[0]}, the video is {self._size[1]}x{self._size[0]}")
        if self.ext == ".gif":
            video_frame = av.VideoFrame.from_ndarray(_palette_frame(arr), format="pal8")
        else:
            video_frame = av.VideoFrame.from_ndarray(pad_to_even(arr), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> Path:
        """Flush, finish the file and move it into place. Returns the path."""
        if self.frames_written == 0:
            self.abort()
            raise MediaError(self.path, "no frames were written")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.chmod(self._tmp, 0o666 & ~_umask())
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        import av  # PyAV loads where video is read or written, not on import
        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError:
                pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | os.PathLike, frames: Iterable | np.ndarray, fps: float = 8.0, **kwargs) -> Path:
    """Write ``frames`` ((T, H, W, 3) uint8, or an iterable of (H, W, 3) frames) to ``path``; the format
    follows the extension (.mp4 H.264 yuv420p, .webm VP9, .mkv, .avi MPEG-4, .gif)."""
    with VideoWriter(path, fps=fps, **kwargs) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)
