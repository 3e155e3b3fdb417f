"""Video round trips through real files: every container/codec we claim, sampling, streaming, rotation."""

from __future__ import annotations

import struct
import tracemalloc

import av
import numpy as np
import pytest

from multimodal.io import VideoWriter, count_frames, iter_frames, probe_video, read_video, write_video


def moving_clip(t: int = 17, h: int = 64, w: int = 64) -> np.ndarray:
    """(t, h, w, 3) uint8: a green 10x10 square moving 2 px/frame right, an orange block standing still."""
    clip = np.zeros((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        clip[i, 10:20, 2 + 2 * i : 12 + 2 * i] = (0, 200, 0)
        clip[i, h - 20 : h - 8, w // 2 : w // 2 + 12] = (255, 128, 0)
    return clip


@pytest.mark.parametrize(
    "ext, codec, max_err",
    [("mp4", "h264", 6.0), ("webm", "vp9", 6.0), ("mkv", "h264", 6.0), ("avi", "mpeg4", 8.0), ("gif", "gif", 0.0)],
)
def test_round_trip_each_container(tmp_path, ext, codec, max_err):
    clip = moving_clip()
    path = write_video(tmp_path / f"clip.{ext}", clip, fps=8)
    info = probe_video(path)
    assert (info.width, info.height, info.codec) == (64, 64, codec)
    assert info.fps == pytest.approx(8.0, rel=0.05)  # GIF stores 12 cs per frame: 8.33 fps
    got = read_video(path)
    assert got.shape == clip.shape and got.dtype == np.uint8
    mean_abs = np.abs(got.astype(np.int16) - clip).mean()
    assert mean_abs <= max_err / 4 + 1e-9, mean_abs
    # the moving square is where it should be in the last frame (centre of its green pixels)
    ys, xs = np.nonzero((got[-1, :, :, 1] > 150) & (got[-1, :, :, 0] < 100))
    assert abs(xs.mean() - (2 + 32 + 4.5)) < 1.0 and abs(ys.mean() - 14.5) < 1.0


def test_uniform_sampling_picks_evenly_spaced_frames(tmp_path):
    clip = moving_clip(t=33)
    path = write_video(tmp_path / "long.mp4", clip, fps=8)
    got = read_video(path, num_frames=5)  # frames 0, 8, 16, 24, 32
    assert got.shape == (5, 64, 64, 3)
    for k, i in enumerate([0, 8, 16, 24, 32]):
        assert np.abs(got[k].astype(int) - clip[i]).mean() < 1.5
    more = read_video(path, num_frames=40)  # more than it has: frames repeat, order kept
    assert more.shape[0] == 40


def test_uniform_sampling_without_frame_count_in_header(tmp_path):
    clip = moving_clip(t=17)
    path = write_video(tmp_path / "clip.webm", clip, fps=8)
    assert probe_video(path).num_frames is None  # matroska stores no count: we demux to count
    assert count_frames(path) == 17
    got = read_video(path, num_frames=3)  # frames 0, 8, 16
    for k, i in enumerate([0, 8, 16]):
        assert np.abs(got[k].astype(int) - clip[i]).mean() < 1.5


def test_target_fps_resamples_by_time(tmp_path):
    clip = moving_clip(t=17)
    path = write_video(tmp_path / "clip.mp4", clip, fps=8)  # 2.125 s
    half = read_video(path, fps=4)
    assert half.shape[0] == 9  # t = 0, 0.25, ..., 2.0
    assert np.abs(half[3].astype(int) - clip[6]).mean() < 1.5
    double = read_video(path, fps=16)
    assert double.shape[0] == 34
    assert np.array_equal(double[6], double[7])  # each source frame shown twice
    assert read_video(path, fps=4, num_frames=3).shape[0] == 3


def test_odd_sizes_are_padded_on_write_and_kept_on_read(tmp_path):
    clip = moving_clip(t=5, h=45, w=63)
    mp4 = write_video(tmp_path / "odd.mp4", clip, fps=8)
    got = read_video(mp4)
    assert got.shape == (5, 46, 64, 3)  # yuv420p needs even sizes: one edge row/column repeated
    assert np.abs(got[:, :45, :63].astype(int) - clip).mean() < 2.0
    gif = write_video(tmp_path / "odd.gif", clip, fps=8)
    assert read_video(gif).shape == (5, 45, 63, 3)  # GIF has no chroma subsampling


def test_streaming_holds_a_few_frames_not_the_file(tmp_path):
    rng = np.random.default_rng(0)
    frames = 240
    with VideoWriter(tmp_path / "long.mp4", fps=24, options={"preset": "ultrafast"}) as writer:
        for i in range(frames):
            frame = np.zeros((96, 128, 3), dtype=np.uint8)
            frame[:, (i % 128)] = rng.integers(0, 255, 3)
            writer.write(frame)
    one_frame = 96 * 128 * 3
    tracemalloc.start()
    n = 0
    for frame in iter_frames(tmp_path / "long.mp4"):
        n += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == frames
    assert peak < 20 * one_frame, (peak, frames * one_frame)  # the whole clip would be 240 frames


def _patch_tkhd_rotation(data: bytearray, height: int) -> bytearray:
    """Set the mp4 track header matrix to a phone's portrait matrix (display = stored frame turned 90 deg clockwise)."""
    at = data.find(b"tkhd")
    assert data[at + 4] == 0  # version 0 box: matrix after 40 bytes of fields
    off = at + 4 + 40
    data[off : off + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, height << 16, 0, 0x40000000)
    return data


def test_rotation_metadata_is_applied(tmp_path):
    h, w = 32, 48
    frame = np.zeros((h, w, 3), dtype=np.uint8)
    frame[: h // 2, : w // 2] = (255, 0, 0)  # red top-left
    frame[h // 2 :, w // 2 :] = (0, 0, 255)  # blue bottom-right
    path = write_video(tmp_path / "plain.mp4", [frame] * 5, fps=8)
    rotated = tmp_path / "portrait.mp4"
    rotated.write_bytes(_patch_tkhd_rotation(bytearray(path.read_bytes()), h))
    info = probe_video(rotated)
    assert info.rotation == -90 and (info.width, info.height) == (h, w)
    got = read_video(rotated)
    assert got.shape == (5, w, h, 3)
    expected = np.rot90(frame, k=-1)  # clockwise
    assert np.abs(got[0].astype(int) - expected).mean() < 3.0


def test_display_rotation_written_by_pyav(tmp_path):
    frame = np.zeros((16, 32, 3), dtype=np.uint8)
    frame[:, :8] = 255  # white left strip
    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 32, 16, "yuv420p"
        s.set_display_rotation(90)
        for _ in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe_video(path)
    got = read_video(path)
    assert got.shape == (3, 32, 16, 3)
    assert np.abs(got[0].astype(int) - np.rot90(frame, k=info.rotation // 90)).mean() < 3.0


def test_reads_odd_sized_streams(tmp_path):
    """VP9 stores odd sizes directly (written here with PyAV, not our padding writer)."""
    clip = moving_clip(t=5, h=45, w=63)
    path = tmp_path / "odd.webm"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=8, options={"crf": "20", "b": "0"})
        s.width, s.height, s.pix_fmt = 63, 45, "yuv420p"
        for frame in clip:
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe_video(path)
    assert (info.width, info.height) == (63, 45)
    got = read_video(path)
    assert got.shape == (5, 45, 63, 3)
    assert np.abs(got.astype(int) - clip).mean() < 3.0
