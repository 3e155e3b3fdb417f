"""Frames for training and checking the autoencoder: the shapes world's own samples, mixed with a rougher
stand-in renderer.

- ``world_clip`` renders a sample of the shapes world (``multimodal.data.world``, the contract in
  ``shared/WORLD.md``): crisp squares, circles and triangles, digit glyphs as coverage, objects never touching.
  This is what the model is trained on and what the autoencoder's PSNR is measured on (the world's test split).
- ``render_clip`` is the stand-in: objects from the same palette, shapes and sizes, but edges drawn either hard
  or antialiased (4x4 supersampled coverage, since other renderers of the world may do either) and objects
  that may overlap. Mixed into training (``AutoencoderTrainConfig.world_fraction``), it keeps the autoencoder
  faithful to frames drawn by renderers other than ours.

Every clip is a pure function of its seed and split; ``split="test"`` uses a disjoint seed range and the test
glyphs (index % 5 == 0).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

PALETTE = np.array(
    [
        (255, 0, 0),  # red
        (0, 200, 0),  # green
        (0, 0, 255),  # blue
        (255, 255, 0),  # yellow
        (255, 0, 255),  # magenta
        (0, 255, 255),  # cyan
        (255, 255, 255),  # white
        (255, 128, 0),  # orange
    ],
    dtype=np.float32,
)
SHAPES = ("square", "circle", "triangle", "digit")
SIZES = (12, 20)
MOTIONS = ((-2, 0), (2, 0), (0, -2), (0, 2), (0, 0))  # left, right, up, down, still (px / frame)
CANVAS = 64
MARGIN = 2
SPLIT_SEED_OFFSET = {"train": 0, "validation": 10_000_000, "test": 20_000_000}
_SS = 4  # supersampling factor of antialiased edges


@lru_cache(maxsize=1)
def _glyphs() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digit images (N, 8, 8) in [0, 1] and their labels; loaded once."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def _glyph_indices(split: str) -> np.ndarray:
    n = len(_glyphs()[0])
    idx = np.arange(n)
    return idx[idx % 5 == 0] if split == "test" else idx[idx % 5 != 0]


@lru_cache(maxsize=4096)
def _digit_coverage(index: int, size: int) -> np.ndarray:
    """Glyph ``index`` scaled to ``size x size`` (bilinear): coverage in [0, 1]."""
    img = torch.from_numpy(_glyphs()[0][index])[None, None]  # (1, 1, 8, 8)
    out = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    return out[0, 0].clamp(0, 1).numpy()


def _shape_coverage(shape: str, size: int, antialias: bool) -> np.ndarray:
    """Coverage (size, size) in [0, 1] of a square, circle or triangle filling a size x size box."""
    s = _SS if antialias else 1
    # sample centres of the (size*s)^2 sub-pixels, in box units [0, size)
    c = (np.arange(size * s, dtype=np.float32) + 0.5) / s
    yy, xx = np.meshgrid(c, c, indexing="ij")
    if shape == "square":
        inside = np.ones_like(xx, dtype=bool)
    elif shape == "circle":
        r = size / 2.0
        inside = (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    elif shape == "triangle":  # apex at top centre, base along the bottom
        half = 0.5 * size * yy / size  # half-width grows linearly from apex (y=0) to base (y=size)
        inside = np.abs(xx - size / 2.0) <= half
    else:
        raise ValueError(f"unknown shape {shape!r}")
    # (size*s, size*s) -> (size, s, size, s) -> mean over sub-pixels -> (size, size)
    return inside.reshape(size, s, size, s).mean(axis=(1, 3)).astype(np.float32)


def render_clip(seed: int, num_frames: int = 17, split: str = "train", max_objects: int = 3) -> np.ndarray:
    """Render one clip: uint8 (num_frames, 64, 64, 3). ``num_frames=1`` gives an image."""
    if split not in SPLIT_SEED_OFFSET:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEED_OFFSET)}, got {split!r}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng(seed + SPLIT_SEED_OFFSET[split])
    glyph_pool = _glyph_indices(split)
    antialias = bool(rng.random() < 0.5)
    frames = np.zeros((num_frames, CANVAS, CANVAS, 3), dtype=np.float32)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        colour = PALETTE[int(rng.integers(len(PALETTE)))]
        dx, dy = MOTIONS[int(rng.integers(len(MOTIONS)))] if num_frames > 1 else (0, 0)
        span_x, span_y = dx * (num_frames - 1), dy * (num_frames - 1)
        lo_x, hi_x = MARGIN - min(0, span_x), CANVAS - MARGIN - size - max(0, span_x)
        lo_y, hi_y = MARGIN - min(0, span_y), CANVAS - MARGIN - size - max(0, span_y)
        if hi_x < lo_x or hi_y < lo_y:  # motion does not fit this size: stay still
            dx = dy = 0
            lo_x, hi_x, lo_y, hi_y = MARGIN, CANVAS - MARGIN - size, MARGIN, CANVAS - MARGIN - size
        x0, y0 = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
        if shape == "digit":
            cov = _digit_coverage(int(glyph_pool[rng.integers(len(glyph_pool))]), size)
        else:
            cov = _shape_coverage(shape, size, antialias)
        cov = cov[..., None]  # (size, size, 1)
        for t in range(num_frames):
            x, y = x0 + dx * t, y0 + dy * t
            patch = frames[t, y : y + size, x : x + size]
            frames[t, y : y + size, x : x + size] = patch * (1.0 - cov) + colour * cov
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def world_clip(index: int, num_frames: int = 17, split: str = "train") -> np.ndarray:
    """Frames of the world's sample ``split_seed(split, index)``: uint8 (num_frames, 64, 64, 3).

    ``num_frames=1`` is the world's image of that seed; otherwise ``num_frames`` (1 + 4k, at most 17)
    consecutive frames of its 17-frame video, starting at frame 0 for the test and validation splits and
    at a seed-chosen frame for training (so clips shorter than 17 frames still see every part of a motion).
    """
    from multimodal.data.render import render_sample
    from multimodal.data.world import NUM_FRAMES, sample_image, sample_video, split_seed

    if num_frames < 1 or num_frames > NUM_FRAMES:
        raise ValueError(f"num_frames must be in 1..{NUM_FRAMES}, got {num_frames}")
    seed = split_seed(split, index)
    if num_frames == 1:
        return render_sample(sample_image(seed))
    start = 0
    if split == "train" and num_frames < NUM_FRAMES:
        start = int(np.random.default_rng([seed, 7]).integers(NUM_FRAMES - num_frames + 1))
    return render_sample(sample_video(seed))[start:start + num_frames]


def to_model_range(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1]."""
    x = torch.as_tensor(clips).float()
    return x.permute(0, 4, 1, 2, 3).div(127.5).sub(1.0)


def batch(seeds: list[int] | range, num_frames: int, split: str = "train", world_fraction: float = 0.0) -> torch.Tensor:
    """A batch of clips as model input: float (B, 3, num_frames, 64, 64) in [-1, 1].

    Each seed's clip is the world's (``world_clip``) with probability ``world_fraction``, decided by the seed,
    else the stand-in's (``render_clip``): 1.0 gives world frames only, 0.0 stand-in frames only."""
    if not 0.0 <= world_fraction <= 1.0:
        raise ValueError(f"world_fraction must be in [0, 1], got {world_fraction}")

    def clip(seed: int) -> np.ndarray:
        world = world_fraction >= 1.0 or (
            world_fraction > 0.0 and np.random.default_rng([seed, 11]).random() < world_fraction)
        return world_clip(seed, num_frames, split) if world else render_clip(seed, num_frames, split)

    return to_model_range(np.stack([clip(int(s)) for s in seeds]))
