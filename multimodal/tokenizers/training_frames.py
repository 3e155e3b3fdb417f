"""A small frame source for training and checking the autoencoder, following ``shared/WORLD.md``.

Frames are 64x64 RGB on black, with objects from the world's palette (square, circle, triangle apex up,
sklearn digit glyphs scaled bilinearly and used as coverage), 12 px or 20 px boxes, moving 2 px per
frame left/right/up/down or staying still. Edges are drawn either hard or antialiased (4x4
supersampled coverage), since other renderers of the world may do either. Every clip is a pure function
of its seed; ``split="test"`` uses a disjoint seed range and the test glyphs (index % 5 == 0).

This is a stand-in for the shapes-world dataset being built in ``multimodal/data/world*.py`` (issue #5):
once that lands, the autoencoder's training and evaluation should read frames from it instead.
Unlike the world, objects here may overlap and captions are not produced: only the pixels matter.
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


def to_model_range(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1]."""
    x = torch.as_tensor(clips).float()
    return x.permute(0, 4, 1, 2, 3).div(127.5).sub(1.0)


def batch(seeds: list[int] | range, num_frames: int, split: str = "train") -> torch.Tensor:
    """A batch of clips as model input: float (B, 3, num_frames, 64, 64) in [-1, 1]."""
    return to_model_range(np.stack([render_clip(int(s), num_frames, split) for s in seeds]))
