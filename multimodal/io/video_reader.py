"""Reading video with PyAV: any container/codec the bundled FFmpeg decodes, frame by frame.

- :func:`iter_frames` streams RGB frames (``(H, W, 3)`` uint8) without holding the file in memory,
  optionally resampled to a target ``fps`` (each output time takes the latest frame shown at it).
- :func:`read_video` returns ``(T, H, W, 3)`` uint8: all frames, ``num_frames`` sampled uniformly
  (indices ``round(linspace(0, n - 1, num_frames))``, so a short video repeats frames), or frames at
  ``fps``. Uniform sampling counts frames from the header, or by demuxing packets (no decoding), then
  decodes once, keeping only the chosen frames.
- Rotation metadata (the display matrix of phone videos) is applied, so frames come out upright;
  odd sizes are kept as they are.

Every failure (missing, empty, non-media, corrupt, truncated, audio-only, no decodable frames) raises
:class:`~multimodal.io.errors.MediaError` naming the file and the cause. ``strict`` (default) also
treats a stream that ends well before its header says (a cut file) as an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from multimodal.io.errors import MediaError, check_media_path, describe_ffmpeg_error

_TRUNCATION_TOLERANCE = 0.9  # fewer than 90% of the header's frames (minus one) counts as truncated


@dataclass(frozen=True)
class VideoInfo:
    """What the header says about a file's first video stream (sizes are after rotation)."""

    path: str
    width: int
    height: int
    fps: float
    num_frames: int | None  # None when the container does not store a count
    duration: float | None  # seconds; None when unknown
    codec: str
    container: str
    rotation: int  # degrees counter-clockwise in the display matrix (0, 90, -90, 180)


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    import av  # PyAV loads where video is read or written, not on import
    p = check_media_path(path)
    try:
        container = av.open(str(p), mode="r")
    except av.error.FFmpegError as exc:
        raise MediaError(p, describe_ffmpeg_error(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MediaError(p, f"cannot open ({exc})") from None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise MediaError(p, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        if stream.codec_context is None or not stream.codec_context.name:
            raise MediaError(p, "video stream has no decodable codec")
        stream.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _stream_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base is microseconds
    return None


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """Decoded frame -> (H, W, 3) uint8, rotated as its display matrix says."""
    rgb = frame.to_ndarray(format="rgb24")
    rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if rotation:
        # the matrix rotates counter-clockwise by `rotation`: np.rot90 with k = rotation/90 does the same
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Header facts of ``path`` (decodes one frame to learn the rotation). Raises :class:`MediaError`."""
    import av  # PyAV loads where video is read or written, not on import
    with _open(path) as (container, stream):
        rotation = 0
        try:
            for frame in container.decode(stream):
                rotation = int(round(getattr(frame, "rotation", 0) or 0))
                break
        except av.error.FFmpegError as exc:
            raise MediaError(path, describe_ffmpeg_error(exc)) from None
        w, h = stream.codec_context.width, stream.codec_context.height
        if rotation % 180:
            w, h = h, w
        return VideoInfo(
            path=str(path),
            width=w,
            height=h,
            fps=_stream_fps(stream),
            num_frames=stream.frames or None,
            duration=_stream_duration(container, stream),
            codec=stream.codec_context.name,
            container=container.format.name,
            rotation=rotation,
        )


def count_frames(path: str | os.PathLike) -> int:
    """Frames in ``path``: the header's count, else the number of video packets (demuxed, not decoded)."""
    import av  # PyAV loads where video is read or written, not on import
    with _open(path) as (container, stream):
        if stream.frames:
            return int(stream.frames)
        n = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    n += 1
        except av.error.FFmpegError as exc:
            raise MediaError(path, describe_ffmpeg_error(exc)) from None
        return n


def _ends_with_gif_trailer(path: str | os.PathLike) -> bool:
    """A whole GIF ends with the trailer byte 0x3B (GIF89a spec, section 27); FFmpeg's GIF demuxer stops quietly at a
    cut, and a GIF header stores no frame count, so the trailer is how a cut file is told from a short one."""
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\x3b"


def _decoded_frames(path, strict: bool) -> Iterator[tuple[int, float | None, av.VideoFrame]]:
    """Yield (index, time in seconds or None, frame); raise MediaError on failure or truncation."""
    import av  # PyAV loads where video is read or written, not on import
    with _open(path) as (container, stream):
        expected = stream.frames or None
        if expected is None:
            duration, fps = _stream_duration(container, stream), _stream_fps(stream)
            expected = int(duration * fps) if duration and fps else None
        n, errors = 0, 0
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:  # the container breaks off (cut or corrupt file)
                if strict:
                    raise MediaError(path, f"{describe_ffmpeg_error(exc)} after {n} decoded frames") from None
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:  # a damaged packet
                errors += 1
                if strict:
                    raise MediaError(path, f"corrupt video data after {n} decoded frames ({describe_ffmpeg_error(exc)})") from None
                continue
            for frame in frames:
                yield n, frame.time, frame
                n += 1
        if n == 0:
            said = f"; the header says {expected}" if expected else ""
            failed = f"; {errors} packets failed to decode" if errors else ""
            raise MediaError(path, f"the video stream has no decodable frames{said}{failed}")
        if strict and expected and n < _TRUNCATION_TOLERANCE * expected - 1:
            raise MediaError(path, f"truncated or corrupt: decoded {n} frames, the header says {expected}")
        if strict and container.format.name == "gif" and not _ends_with_gif_trailer(path):
            raise MediaError(path, f"truncated GIF: decoded {n} frames, then the file ends without the GIF trailer")


def iter_frames(path: str | os.PathLike, fps: float | None = None, strict: bool = True) -> Iterator[np.ndarray]:
    """Stream upright RGB frames ``(H, W, 3)`` uint8 of ``path``, resampled to ``fps`` if given.

    With ``fps``, output time ``k / fps`` (from the first frame) takes the latest frame whose time is
    at most it, up to the end of the last frame; frames repeat when ``fps`` exceeds the source rate.
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if fps is None:
        for _, _, frame in _decoded_frames(path, strict):
            yield _upright(frame)
        return
    step = 1.0 / fps
    prev, prev_t, t0, k, last_dt = None, 0.0, None, 0, None
    for index, time, frame in _decoded_frames(path, strict):
        t = time if time is not None else index * (last_dt or step)
        t0 = t if t0 is None else t0
        t -= t0
        if prev is not None:
            last_dt = max(t - prev_t, 1e-6)
            while k * step < t - 1e-6:  # output times before this frame show the previous one
                yield prev
                k += 1
        prev, prev_t = _upright(frame), t
    if prev is not None:
        end = prev_t + (last_dt or step)
        while k * step < end - 1e-6:
            yield prev
            k += 1


def read_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    strict: bool = True,
) -> np.ndarray:
    """Frames of ``path`` as ``(T, H, W, 3)`` uint8: all of them, ``num_frames`` spread uniformly, or
    sampled at ``fps`` (then cut to ``num_frames`` if both are given). Raises :class:`MediaError`."""
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None or num_frames is None:
        frames = []
        for frame in iter_frames(path, fps=fps, strict=strict):
            frames.append(frame)
            if num_frames is not None and len(frames) == num_frames:
                break
        return np.stack(frames)
    total = count_frames(path)
    for _attempt in range(2):
        picks = np.rint(np.linspace(0, max(total - 1, 0), num_frames)).astype(np.int64)  # (num_frames,)
        wanted = set(picks.tolist())
        kept: dict[int, np.ndarray] = {}
        decoded = 0
        for index, _, frame in _decoded_frames(path, strict):
            decoded = index + 1
            if index in wanted:
                kept[index] = _upright(frame)
            if len(kept) == len(wanted):
                break
        if len(kept) == len(wanted):
            return np.stack([kept[i] for i in picks.tolist()])
        total = decoded  # the count overestimated (non-strict read of a short stream): sample again
    raise MediaError(path, f"could not decode the {num_frames} sampled frames")
