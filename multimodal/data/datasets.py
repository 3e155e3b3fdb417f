"""PyTorch datasets over the shapes-and-digits world, rendered on the fly.

Item ``i`` of a dataset is the sample of seed ``split_seed(split, start + i)``, so a dataset is a
pure function of its config: no files, no state, identical across workers and machines. Rendering
costs well under a millisecond per image and about half a millisecond per 17-frame video on one
core, so the world does not slow down training even without worker processes.

Every item is a dict::

    pixels   float32 tensor (3, T, 64, 64) in [0, 1]   (T = 1 for an image, 17 for a video)
    caption  str                                        the canonical caption
    seed     int                                        the sample's seed
    kind     str                                        'single', 'relation', 'count' or 'video'
    tags     list[str]                                  report tags (see ``world.TAGS``)

``collate_world`` batches items of mixed frame counts by grouping them per frame count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from multimodal.data.render import render_sample
from multimodal.data.world import SPLITS, WorldSample, sample_image, sample_video, split_seed

MODALITIES = ("image", "video", "mixed")


@dataclass
class WorldDataConfig:
    """Which samples a :class:`WorldDataset` serves.

    ``modality`` is 'image', 'video' or 'mixed'; in 'mixed', item ``i`` is a video with probability
    ``video_fraction``, decided by its seed. ``start`` offsets the seed index inside the split.
    """

    split: str = "train"
    modality: str = "image"
    length: int = 10_000
    start: int = 0
    video_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {self.split!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.length < 1:
            raise ValueError(f"length must be positive, got {self.length}")
        if self.start < 0:
            raise ValueError(f"start must be >= 0, got {self.start}")
        lo, hi = SPLITS[self.split]
        if self.start + self.length > hi - lo:
            raise ValueError(
                f"start + length = {self.start + self.length} exceeds the {hi - lo} seeds of split {self.split!r}"
            )
        if not 0.0 <= self.video_fraction <= 1.0:
            raise ValueError(f"video_fraction must be in [0, 1], got {self.video_fraction}")


def sample_for(config: WorldDataConfig, index: int) -> WorldSample:
    """The world sample behind item ``index`` of a dataset with ``config``."""
    if not 0 <= index < config.length:
        raise IndexError(f"index {index} out of range for a dataset of length {config.length}")
    seed = split_seed(config.split, config.start + index)
    video = config.modality == "video"
    if config.modality == "mixed":
        video = bool(np.random.default_rng([seed, 2]).random() < config.video_fraction)
    return sample_video(seed) if video else sample_image(seed)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames -> float32 tensor (3, T, H, W) in [0, 1]."""
    # numpy, not torch: the conversion stays on the calling thread (no intra-op pool wake-ups)
    channels_first = frames.transpose(3, 0, 1, 2).astype(np.float32)  # (3, T, H, W)
    channels_first *= np.float32(1.0 / 255.0)
    return torch.from_numpy(channels_first)


class WorldDataset(Dataset):
    """Images, videos or a mix of both from one split of the world (see the module docstring)."""

    def __init__(self, config: WorldDataConfig | None = None, **overrides) -> None:
        if config is None:
            config = WorldDataConfig(**overrides)
        elif overrides:
            raise ValueError("pass either a WorldDataConfig or keyword overrides, not both")
        self.config = config

    def __len__(self) -> int:
        return self.config.length

    def sample(self, index: int) -> WorldSample:
        """The structured sample (objects, positions, clauses) of item ``index``."""
        return sample_for(self.config, index)

    def __getitem__(self, index: int) -> dict:
        sample = self.sample(index)
        return {
            "pixels": to_tensor(render_sample(sample)),
            "caption": sample.caption,
            "seed": sample.seed,
            "kind": sample.kind,
            "tags": list(sample.tags),
        }


def image_dataset(split: str = "train", length: int = 10_000, start: int = 0) -> WorldDataset:
    """Images of one split."""
    return WorldDataset(WorldDataConfig(split=split, modality="image", length=length, start=start))


def video_dataset(split: str = "train", length: int = 10_000, start: int = 0) -> WorldDataset:
    """17-frame videos of one split."""
    return WorldDataset(WorldDataConfig(split=split, modality="video", length=length, start=start))


def mixed_dataset(split: str = "train", length: int = 10_000, start: int = 0, video_fraction: float = 0.5) -> WorldDataset:
    """Images and videos of one split, mixed by seed."""
    return WorldDataset(
        WorldDataConfig(split=split, modality="mixed", length=length, start=start, video_fraction=video_fraction)
    )


def collate_world(items: list[dict]) -> dict[int, dict]:
    """Batch items, grouped by frame count: ``{T: {"pixels": (B_T, 3, T, 64, 64), "caption": [...], ...}}``.

    A batch of images only has the single key 1; a mixed batch has keys 1 and 17. Groups keep the
    order in which their items arrived.
    """
    groups: dict[int, list[dict]] = {}
    for item in items:
        groups.setdefault(int(item["pixels"].shape[1]), []).append(item)
    out: dict[int, dict] = {}
    for frames, group in sorted(groups.items()):
        out[frames] = {
            "pixels": torch.from_numpy(np.stack([g["pixels"].numpy() for g in group])),
            "caption": [g["caption"] for g in group],
            "seed": torch.tensor([g["seed"] for g in group], dtype=torch.int64),
            "kind": [g["kind"] for g in group],
            "tags": [g["tags"] for g in group],
        }
    return out
