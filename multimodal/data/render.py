"""Rasterising samples of the shapes-and-digits world into uint8 RGB frames.

Geometric shapes are drawn crisp (a pixel is inside when its centre is inside, with the triangle's
rows measured at their lower edge so the apex row is drawn and the box is exactly filled); digits
are drawn with their glyph coverage as alpha over black. Objects never overlap, so each object's
pixels are simply written into the frame. Sprites are cached, so a 17-frame video costs a few
array copies per object and frame.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from multimodal.data.glyphs import glyph_coverage
from multimodal.data.world import COLOURS, FRAME_SIZE, WorldObject, WorldSample


@lru_cache(maxsize=None)
def shape_coverage(shape: str, size: int) -> np.ndarray:
    """Coverage (0 or 1, float32, read-only) of a square, circle or triangle filling a ``size`` box."""
    c = (np.arange(size, dtype=np.float64) + 0.5)  # pixel centres
    y, x = np.meshgrid(c, c, indexing="ij")
    half = size / 2.0
    if shape == "square":
        mask = np.ones((size, size), dtype=bool)
    elif shape == "circle":
        mask = (x - half) ** 2 + (y - half) ** 2 <= half**2
    elif shape == "triangle":  # apex up, centred; base along the bottom row
        mask = np.abs(x - half) <= (y + 0.5) * half / size
    else:
        raise ValueError(f"not a geometric shape: {shape!r}")
    cover = mask.astype(np.float32)
    cover.setflags(write=False)
    return cover


@lru_cache(maxsize=8192)
def object_sprite(colour: str, shape: str, size: int, glyph: int | None) -> np.ndarray:
    """The object's pixels, shape (size, size, 3), uint8, read-only."""
    if shape.startswith("digit"):
        if glyph is None:
            raise ValueError(f"{shape} needs a glyph index")
        cover = glyph_coverage(glyph, size)
    else:
        cover = shape_coverage(shape, size)
    rgb = np.asarray(COLOURS[colour], dtype=np.float32)
    sprite = np.rint(cover[:, :, None] * rgb).astype(np.uint8)
    sprite.setflags(write=False)
    return sprite


def draw_object(frame: np.ndarray, obj: WorldObject, t: int = 0) -> None:
    """Write ``obj`` at frame ``t`` of its motion into ``frame`` (H, W, 3) uint8, in place."""
    sprite = object_sprite(obj.colour, obj.shape, obj.pixels, obj.glyph)
    x0, y0, x1, y1 = obj.box(t)
    region = frame[y0:y1, x0:x1]
    np.maximum(region, sprite, out=region)


def render_sample(sample: WorldSample) -> np.ndarray:
    """All frames of ``sample``: uint8 array of shape (T, 64, 64, 3); T = 1 for images."""
    frames = np.zeros((sample.num_frames, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    for t in range(sample.num_frames):
        for obj in sample.objects:
            draw_object(frames[t], obj, t)
    return frames
