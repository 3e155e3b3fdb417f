"""Scene parsing from pixels: palette snapping, objects, shape, size, position.

The parser reads a frame the way ``WORLD.md`` defines it, with no learned detector:

1. **Canvas.** Frames of any size are resized to 64×64 first (bilinear, antialiased when shrinking).
2. **Foreground.** A pixel is foreground when its brightest channel reaches ``FOREGROUND``; dimmer
   pixels (glyph antialiasing, codec ringing) are background.
3. **Objects.** Foreground pixels closer than ``GAP`` px (Chebyshev distance ≤ 2, i.e. a one-pixel
   hole) belong to one object: glyph strokes broken by thresholding stay together, while two objects,
   whose boxes are at least 2 px apart, never merge. Groups under ``MIN_AREA`` pixels are noise.
4. **Colour.** Every foreground pixel is scaled to full brightness (so a half-covered glyph pixel
   keeps its hue) and snapped to the nearest palette colour; the object's colour is the
   brightness-weighted majority.
5. **Shape.** The object's half-coverage silhouette, cropped to its box, is compared (IoU) with an
   ideal square, circle and apex-up triangle drawn in that box; a near-square box whose best IoU
   reaches ``SHAPE_IOU`` and whose interior is solid is that shape. Anything else is a digit, read
   by the digit classifier (``multimodal.eval.digits``).
6. **Size and position.** Size from the larger side of the box (small < 16 px ≤ large); position is
   the box centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from multimodal.data.world import COLOURS, FRAME_SIZE, SIZE_THRESHOLD

FOREGROUND = 56  # brightest channel at or above this -> foreground (about 0.22 of full brightness)
MIN_AREA = 6  # px; smaller groups are noise
SHAPE_IOU = 0.7  # best geometric IoU of the half-coverage silhouette at or above this -> that shape
SOLID = 0.9  # mean coverage of a geometric shape's interior
SQUARE_ASPECT = 0.8  # geometric shapes have near-square boxes (min side / max side)
CLASSIFIER_SIDE = 16  # digit crops are resampled to this side

PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in PALETTE_NAMES], dtype=np.float32)  # (8, 3)
_PALETTE_PEAK = _PALETTE.max(axis=1)  # (8,) full-coverage brightness of each colour
_PALETTE_UNIT = _PALETTE / _PALETTE_PEAK[:, None] * 255.0  # hue at full brightness


@dataclass(frozen=True)
class SceneObject:
    """One object found in a frame.

    ``box`` is (x0, y0, x1, y1) with x1/y1 exclusive, in 64×64 canvas pixels; ``shape`` is
    'square', 'circle', 'triangle' or 'digit N'; ``family`` drops the digit's value.
    """

    colour: str
    shape: str
    size: str
    box: tuple[int, int, int, int]
    area: int
    shape_iou: float
    digit_confidence: float | None = None

    @property
    def family(self) -> str:
        return "digit" if self.shape.startswith("digit") else self.shape

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def to_canvas(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) or (H, W, 3) uint8 frames of any size -> (T, 64, 64, 3) uint8."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {frames.shape}")
    frames = frames[..., :3]
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames.astype(np.float64)), 0, 255).astype(np.uint8)
    if frames.shape[1:3] == (FRAME_SIZE, FRAME_SIZE):
        return frames
    resized = [
        np.asarray(Image.fromarray(np.ascontiguousarray(f), "RGB").resize((FRAME_SIZE, FRAME_SIZE), Image.BILINEAR))
        for f in frames
    ]
    return np.stack(resized)


def snap_colours(pixels: np.ndarray) -> np.ndarray:
    """Palette index (into ``PALETTE_NAMES``) of each (N, 3) pixel, judged by hue at full brightness."""
    pixels = pixels.astype(np.float32)
    peak = np.maximum(pixels.max(axis=-1, keepdims=True), 1.0)
    unit = pixels / peak * 255.0  # (N, 3)
    dist = ((unit[:, None, :] - _PALETTE_UNIT[None, :, :]) ** 2).sum(-1)  # (N, 8)
    return dist.argmin(axis=1)


@lru_cache(maxsize=4096)
def _template(shape: str, h: int, w: int) -> np.ndarray:
    """An ideal ``shape`` mask filling an h×w box (pixel centres; triangle rows at their lower edge)."""
    y = (np.arange(h) + 0.5)[:, None] / h  # (h, 1) in (0, 1)
    x = (np.arange(w) + 0.5)[None, :] / w  # (1, w)
    if shape == "square":
        m = np.ones((h, w), dtype=bool)
    elif shape == "circle":
        m = (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
    else:  # triangle, apex up
        m = np.abs(x - 0.5) <= (y + 0.5 / h) * 0.5
    return np.broadcast_to(m, (h, w))


def geometric_match(mask: np.ndarray) -> tuple[str, float]:
    """The best geometric shape for a cropped boolean mask and its IoU with that shape's template."""
    h, w = mask.shape
    best, best_iou = "square", -1.0
    for shape in ("square", "circle", "triangle"):
        t = _template(shape, h, w)
        iou = float(np.logical_and(mask, t).sum() / max(np.logical_or(mask, t).sum(), 1))
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, best_iou


def classify_geometry(pixels: np.ndarray, mask: np.ndarray, colour: str) -> tuple[str, float]:
    """'square', 'circle', 'triangle' or 'digit' for an object's box pixels and foreground mask.

    The silhouette is the object's pixels at half coverage or more (where a blurred or antialiased
    edge crosses the true boundary). It is a geometric shape when its box is near-square, its IoU with
    that shape's template reaches ``SHAPE_IOU`` and the template's interior (two pixels in from the
    edge) is solidly covered (mean coverage ≥ ``SOLID``); glyph strokes never are.
    """
    peak = float(_PALETTE_PEAK[PALETTE_NAMES.index(colour)])
    cover = np.where(mask, pixels.max(axis=-1) / peak, 0.0).clip(0.0, 1.0)
    half = cover >= 0.5
    if not half.any():
        return "digit", 0.0
    ys, xs = np.nonzero(half)
    half = half[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    cover = cover[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = half.shape
    shape, iou = geometric_match(half)
    inner = ndimage.binary_erosion(_template(shape, h, w), iterations=2)
    solid = float(cover[inner].mean()) if inner.any() else 0.0
    if min(h, w) / max(h, w) < SQUARE_ASPECT or iou < SHAPE_IOU or solid < SOLID:
        return "digit", iou
    return shape, iou


def digit_crop(frame: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], colour: str) -> np.ndarray:
    """The classifier's input for an object: coverage in its box, padded square, ``CLASSIFIER_SIDE``².

    Coverage is the brightest channel over the colour's full brightness, kept only on the object's
    foreground pixels and their one-pixel rim (the glyph's antialiasing); float32 in [0, 1].
    """
    x0, y0, x1, y1 = box
    peak = float(_PALETTE_PEAK[PALETTE_NAMES.index(colour)])
    cover = frame[y0:y1, x0:x1].max(axis=-1).astype(np.float32) / peak
    keep = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
    cover = np.where(keep, cover.clip(0.0, 1.0), 0.0).astype(np.float32)
    h, w = cover.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = cover
    small = Image.fromarray(square, mode="F").resize((CLASSIFIER_SIDE, CLASSIFIER_SIDE), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32)


@dataclass(frozen=True)
class _Blob:
    colour: str
    family: str
    size: str
    box: tuple[int, int, int, int]
    area: int
    iou: float
    crop: np.ndarray | None


def _blobs(frame: np.ndarray) -> list[_Blob]:
    """Objects of one 64×64 frame before digit classification."""
    bright = frame.max(axis=-1)
    fg = bright >= FOREGROUND
    if not fg.any():
        return []
    # grow every pixel one step right and down: pixels with a one-pixel hole between them touch
    grown = fg.copy()
    grown[:, 1:] |= fg[:, :-1]
    grown[1:, :] |= fg[:-1, :]
    grown[1:, 1:] |= fg[:-1, :-1]
    labels, n = ndimage.label(grown, structure=np.ones((3, 3), bool))
    labels = np.where(fg, labels, 0)
    blobs = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl] == k
        area = int(sub.sum())
        if area < MIN_AREA:
            continue
        ys, xs = np.nonzero(sub)
        y0, y1 = sl[0].start + ys.min(), sl[0].start + ys.max() + 1
        x0, x1 = sl[1].start + xs.min(), sl[1].start + xs.max() + 1
        mask = labels[y0:y1, x0:x1] == k
        pixels = frame[y0:y1, x0:x1][mask]
        votes = np.bincount(snap_colours(pixels), weights=pixels.max(axis=-1).astype(np.float64), minlength=len(PALETTE_NAMES))
        colour = PALETTE_NAMES[int(votes.argmax())]
        h, w = mask.shape
        shape, iou = classify_geometry(frame[y0:y1, x0:x1], mask, colour)
        size = "large" if max(h, w) >= SIZE_THRESHOLD else "small"
        box = (int(x0), int(y0), int(x1), int(y1))
        crop = digit_crop(frame, mask, box, colour) if shape == "digit" else None
        blobs.append(_Blob(colour, shape, size, box, area, iou, crop))
    return blobs


def parse_frames(frames: np.ndarray, classifier=None) -> list[list[SceneObject]]:
    """Objects of every frame: ``parse_frames(frames)[t]`` lists frame ``t``'s objects, top to bottom.

    ``frames`` is (T, H, W, 3) or (H, W, 3), any size (resized to 64×64). ``classifier`` reads the
    digits; by default the package's shipped :class:`~multimodal.eval.digits.DigitClassifier`.
    """
    canvas = to_canvas(frames)
    per_frame = [_blobs(f) for f in canvas]
    crops = [b.crop for blobs in per_frame for b in blobs if b.crop is not None]
    digits: list[tuple[int, float]] = []
    if crops:
        if classifier is None:
            from multimodal.eval.digits import default_classifier

            classifier = default_classifier()
        digits = classifier.predict(np.stack(crops))
    it = iter(digits)
    out = []
    for blobs in per_frame:
        objs = []
        for b in blobs:
            shape, conf = b.family, None
            if b.crop is not None:
                label, conf = next(it)
                shape = f"digit {label}"
            objs.append(SceneObject(b.colour, shape, b.size, b.box, b.area, b.iou, conf))
        out.append(objs)
    return out


def parse_frame(frame: np.ndarray, classifier=None) -> list[SceneObject]:
    """Objects of one (H, W, 3) frame."""
    return parse_frames(np.asarray(frame)[None], classifier)[0]
