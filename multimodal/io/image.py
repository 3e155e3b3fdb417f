"""Reading and writing still images with Pillow (PNG, JPEG, WebP, GIF's first frame, BMP, TIFF, ...).

:func:`read_image` always returns ``(H, W, 3)`` uint8 RGB, upright:

- EXIF orientation (tags 2-8, as cameras write them) is applied, then dropped;
- RGBA / LA / palette-with-transparency images are composited over ``background`` (black by default,
  the shapes world's canvas colour);
- greyscale (L, 1-bit) is replicated to three channels;
- 16-bit images (I;16, I;16B, I, 48-bit RGB PNG) are scaled to 8 bits by ``round(v * 255 / 65535)``;
  CMYK and YCbCr are converted by Pillow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from multimodal.io.errors import MediaError, check_media_path

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """Any Pillow image -> (H, W, 3) uint8 RGB."""
    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img, dtype=np.float64)  # (H, W), values 0..65535 (mode I may exceed: clipped)
        grey = np.clip(np.rint(wide * 255.0 / 65535.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def read_image(path: str | os.PathLike, background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Read an image file as upright ``(H, W, 3)`` uint8 RGB. Raises :class:`MediaError` on failure."""
    p = check_media_path(path)
    try:
        with Image.open(p) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return np.ascontiguousarray(_to_rgb(upright, background))
    except UnidentifiedImageError:
        raise MediaError(p, "not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise MediaError(p, f"corrupt or truncated image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise MediaError(p, f"image too large ({exc})") from None


def write_image(path: str | os.PathLike, image: np.ndarray | Image.Image, quality: int = 95) -> Path:
    """Write ``(H, W, 3)``/``(H, W, 4)``/``(H, W)`` uint8 to ``path`` (format from the extension),
    atomically. JPEG/WebP use ``quality``; PNG is lossless."""
    path = Path(path)
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)))
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image extension {path.suffix!r} for {path}")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
        img.save(tmp, format=fmt, **kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
