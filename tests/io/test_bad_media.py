"""Bad input: every broken file raises one MediaError naming the file and the cause, quietly."""

from __future__ import annotations

import av
import numpy as np
import pytest

from multimodal.io import MediaError, count_frames, iter_frames, probe_video, read_image, read_video, write_video


def _clip(t: int = 17) -> np.ndarray:
    clip = np.zeros((t, 64, 64, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    for i in range(t):  # texture so that every frame costs bytes
        clip[i, :, :, 0] = rng.integers(0, 255, (64, 64))
        clip[i, 20:40, 2 * i : 2 * i + 20] = (0, 200, 0)
    return clip


def _expect_media_error(capfd, fn, path, *causes: str) -> MediaError:
    with pytest.raises(MediaError) as info:
        fn(path)
    err = info.value
    assert str(path) in str(err) and err.path == str(path)
    assert any(c in err.cause for c in causes), err.cause
    assert "\n" not in str(err)
    out = capfd.readouterr()
    assert out.err == "" and out.out == "", out  # no bare FFmpeg log lines
    return err


READERS = [read_video, probe_video, count_frames, lambda p: list(iter_frames(p))]


@pytest.mark.parametrize("reader", READERS)
def test_missing_path(tmp_path, capfd, reader):
    _expect_media_error(capfd, reader, tmp_path / "nope.mp4", "no such file")


@pytest.mark.parametrize("reader", READERS)
def test_zero_byte_file(tmp_path, capfd, reader):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    _expect_media_error(capfd, reader, path, "empty (0 bytes)")


def test_directory(tmp_path, capfd):
    _expect_media_error(capfd, read_video, tmp_path, "directory")


@pytest.mark.parametrize("content", [b"hello, this is not a video\n" * 200, bytes(range(256)) * 50])
def test_non_media_file(tmp_path, capfd, content):
    path = tmp_path / "notes.mp4"
    path.write_bytes(content)
    _expect_media_error(capfd, read_video, path, "not a readable media file")


@pytest.mark.parametrize("ext", ["mp4", "mkv", "webm"])
def test_corrupt_header(tmp_path, capfd, ext):
    good = write_video(tmp_path / f"good.{ext}", _clip(), fps=8)
    data = bytearray(good.read_bytes())
    data[:64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    bad = tmp_path / f"corrupt.{ext}"
    bad.write_bytes(bytes(data))
    _expect_media_error(capfd, read_video, bad, "corrupt", "not a readable media file", "could not decode")


@pytest.mark.parametrize("ext, keep", [("mp4", 0.5), ("avi", 0.5), ("mkv", 0.6), ("webm", 0.6)])
def test_truncated_file(tmp_path, capfd, ext, keep):
    good = write_video(tmp_path / f"good.{ext}", _clip(), fps=8)
    data = good.read_bytes()
    bad = tmp_path / f"cut.{ext}"
    bad.write_bytes(data[: int(len(data) * keep)])
    _expect_media_error(capfd, read_video, bad, "truncated", "not a readable media file", "no decodable frames")


def test_truncated_gif(tmp_path, capfd):
    """A GIF stores no frame count and FFmpeg stops quietly at a cut: the missing trailer byte gives it away."""
    good = write_video(tmp_path / "good.gif", _clip(), fps=8)
    assert len(read_video(good)) == 17
    data = good.read_bytes()
    cut = tmp_path / "cut.gif"
    cut.write_bytes(data[: int(len(data) * 0.5)])
    _expect_media_error(capfd, read_video, cut, "truncated GIF")
    assert 0 < len(read_video(cut, strict=False)) < 17          # a lenient read returns what decodes


def test_truncated_faststart_mp4_is_caught_by_frame_count(tmp_path, capfd):
    """moov first: the file opens, then the stream ends early; strict reading notices the shortfall."""
    path = tmp_path / "fast.mp4"
    clip = _clip(33)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8, options={"preset": "ultrafast", "g": "4"})
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for frame in clip:
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.5)])
    err = _expect_media_error(capfd, read_video, cut, "truncated", "decoded")
    assert "33" in err.cause  # names what the header promised
    partial = read_video(cut, strict=False)  # a lenient read returns what decodes
    assert 0 < len(partial) < 33


def test_audio_only_file(tmp_path, capfd):
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    _expect_media_error(capfd, read_video, path, "no video stream (streams: audio)")


def test_video_stream_without_decodable_frames(tmp_path, capfd):
    """A matroska file whose video track has no packets (only the audio track carries data)."""
    path = tmp_path / "novideo.mkv"
    with av.open(str(path), "w", format="matroska") as c:
        v = c.add_stream("libx264", rate=8)
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        v.codec_context.open()
        a = c.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    with av.open(str(path)) as c:  # the file opens and declares a video stream...
        assert len(c.streams.video) == 1
    _expect_media_error(capfd, read_video, path, "no decodable frames")


def test_garbled_packets_strict_raises_lenient_skips(tmp_path, capfd):
    """Overwrite the middle of an AVI's payload: strict reading raises or reports, never crashes."""
    good = write_video(tmp_path / "good.avi", _clip(), fps=8)
    data = bytearray(good.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 2000] = np.random.default_rng(3).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    bad = tmp_path / "garbled.avi"
    bad.write_bytes(bytes(data))
    try:
        frames = read_video(bad)
        assert frames.shape[1:] == (64, 64, 3)
    except MediaError as err:
        assert str(bad) in str(err)
    assert len(read_video(bad, strict=False)) > 0
    capfd.readouterr()


def test_bad_images(tmp_path, capfd):
    missing = tmp_path / "none.png"
    _expect_media_error(capfd, read_image, missing, "no such file")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _expect_media_error(capfd, read_image, empty, "empty (0 bytes)")
    text = tmp_path / "text.jpg"
    text.write_bytes(b"not an image at all" * 10)
    _expect_media_error(capfd, read_image, text, "not an image")
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:300])
    _expect_media_error(capfd, read_image, cut, "corrupt or truncated")
