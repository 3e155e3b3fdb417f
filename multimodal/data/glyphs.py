"""Handwritten digit glyphs of the shapes-and-digits world.

The only outside data of the world is scikit-learn's bundled copy of the UCI handwritten digits
(``sklearn.datasets.load_digits``: 1,797 images of 8×8 pixels with 17 grey levels, 0..16). It ships
inside the scikit-learn wheel, so nothing is downloaded.

A glyph is drawn by scaling its 8×8 image to the object's size (bilinear) and reading
``intensity / 16`` as the coverage of the object's colour over the black background. Glyphs whose
sklearn index is a multiple of 5 are *test glyphs*: they never appear in training samples, and the
scorer's digit classifier never sees them while it learns.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

TEST_GLYPH_MODULUS = 5  # sklearn index % 5 == 0 -> test glyph


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0).clip(0.0, 1.0)  # (1797, 8, 8) coverage
    labels = digits.target.astype(np.int64)  # (1797,)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def glyph_images() -> np.ndarray:
    """All 1,797 glyphs as coverage in [0, 1], shape (1797, 8, 8), float32, read-only."""
    return _load()[0]


def glyph_labels() -> np.ndarray:
    """The digit (0..9) of every glyph, shape (1797,), int64, read-only."""
    return _load()[1]


def is_test_glyph(index: int) -> bool:
    """True for the glyphs reserved for testing (sklearn index % 5 == 0)."""
    return index % TEST_GLYPH_MODULUS == 0


@lru_cache(maxsize=None)
def glyph_indices(digit: int, test: bool) -> tuple[int, ...]:
    """Indices of the glyphs that draw ``digit``, from the test glyphs or from the training glyphs."""
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be in 0..9, got {digit}")
    labels = glyph_labels()
    return tuple(int(i) for i in np.flatnonzero(labels == digit) if is_test_glyph(int(i)) == test)


def split_glyph_indices(test: bool) -> np.ndarray:
    """All glyph indices of one side of the split (int64 array, ascending)."""
    idx = np.arange(len(glyph_labels()))
    keep = (idx % TEST_GLYPH_MODULUS == 0) == test
    return idx[keep]


@lru_cache(maxsize=4096)
def glyph_coverage(index: int, size: int) -> np.ndarray:
    """The glyph ``index`` scaled to ``size``×``size`` pixels (bilinear): coverage in [0, 1], float32.

    The result is cached and read-only.
    """
    if size < 1:
        raise ValueError(f"glyph size must be positive, got {size}")
    image = glyph_images()[index]
    scaled = Image.fromarray(np.ascontiguousarray(image), mode="F").resize((size, size), Image.BILINEAR)
    cover = np.asarray(scaled, dtype=np.float32).clip(0.0, 1.0)
    cover.setflags(write=False)
    return cover
