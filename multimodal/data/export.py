"""Writing a sample of the world to a folder, as a user's own data would look.

Layout (``write_world``)::

    OUT/images/<seed>.png      one PNG per image sample
    OUT/videos/<seed>.mp4      one H.264 (yuv420p) mp4 per video sample, 17 frames at 8 fps
    OUT/captions.jsonl         one line per file: {"file", "caption", "kind", "tags", "seed", "split",
                               "num_frames", "objects", "positions"} (file relative to OUT)

The same ``captions.jsonl`` layout is what ``multimodal eval`` reads prompts and reference captions from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from multimodal.data.files import write_jsonl, write_mp4, write_png
from multimodal.data.render import render_sample
from multimodal.data.world import FPS, SPLITS, sample_image, sample_video, split_seed

CAPTIONS_FILE = "captions.jsonl"


@dataclass
class WorldExportConfig:
    """How many samples of which split ``write_world`` writes; ``start`` is the first seed index."""

    split: str = "test"
    images: int = 16
    videos: int = 4
    start: int = 0

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {self.split!r}")
        if self.images < 0 or self.videos < 0:
            raise ValueError(f"images and videos must be >= 0, got {self.images} and {self.videos}")
        if self.images + self.videos == 0:
            raise ValueError("nothing to write: images and videos are both 0")
        if self.start < 0:
            raise ValueError(f"start must be >= 0, got {self.start}")
        lo, hi = SPLITS[self.split]
        if self.start + max(self.images, self.videos) > hi - lo:
            raise ValueError(f"start + count exceeds the {hi - lo} seeds of split {self.split!r}")


def write_world(out: str | os.PathLike, config: WorldExportConfig) -> list[dict]:
    """Write images, videos and ``captions.jsonl`` under ``out``; returns the caption rows."""
    out = Path(out)
    rows: list[dict] = []
    if config.images:
        (out / "images").mkdir(parents=True, exist_ok=True)
    if config.videos:
        (out / "videos").mkdir(parents=True, exist_ok=True)
    for i in range(config.images):
        sample = sample_image(split_seed(config.split, config.start + i))
        name = f"images/{sample.seed}.png"
        write_png(out / name, render_sample(sample)[0])
        rows.append({"file": name, **sample.to_dict()})
    for i in range(config.videos):
        sample = sample_video(split_seed(config.split, config.start + i))
        name = f"videos/{sample.seed}.mp4"
        write_mp4(out / name, render_sample(sample), fps=FPS)
        rows.append({"file": name, **sample.to_dict()})
    write_jsonl(out / CAPTIONS_FILE, rows)
    return rows
