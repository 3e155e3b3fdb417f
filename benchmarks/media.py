"""Benchmark of media I/O: decode frames/s per container/codec, uniform sampling, and write speed.

Writes JSON (stdout, or ``--out FILE``)::

    python benchmarks/media.py --out runs/bench_media.json

A synthetic clip (moving shapes with texture, ``--frames`` frames at ``--size``) is written in each
format, then read back whole (:func:`read_video`), streamed (:func:`iter_frames`), and sampled to 17
frames uniformly. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from multimodal.io import iter_frames, read_video, write_video


def synthetic_clip(frames: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    clip = np.zeros((frames, size, size, 3), dtype=np.uint8)
    noise = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
    s = size // 6
    for t in range(frames):
        clip[t] = noise
        x = (2 * t) % (size - s)
        clip[t, s : 2 * s, x : x + s] = (255, 0, 0)
        clip[t, 3 * s : 4 * s, size - s - x : size - x] = (0, 200, 0)
    return clip


def bench(ext: str, clip: np.ndarray, folder: Path) -> dict:
    path = folder / f"clip.{ext}"
    start = time.perf_counter()
    write_video(path, clip, fps=24)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    whole = read_video(path)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    n = sum(1 for _ in iter_frames(path))
    stream_s = time.perf_counter() - start
    start = time.perf_counter()
    read_video(path, num_frames=17)
    sample_s = time.perf_counter() - start
    return {
        "file_KiB": round(path.stat().st_size / 1024, 1),
        "write_frames_per_s": round(len(clip) / write_s, 1),
        "read_video_frames_per_s": round(len(whole) / read_s, 1),
        "iter_frames_frames_per_s": round(n / stream_s, 1),
        "uniform_17_seconds": round(sample_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    clip = synthetic_clip(args.frames, args.size)
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor()},
              "clip": {"frames": args.frames, "height": args.size, "width": args.size}}
    with tempfile.TemporaryDirectory() as tmp:
        for ext in ("mp4", "webm", "mkv", "avi", "gif"):
            report[ext] = bench(ext, clip, Path(tmp))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
