"""Image reading: formats, modes (RGBA, greyscale, 16-bit, palette), EXIF orientation; atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multimodal.io import read_image, write_image


def quadrants(h: int = 40, w: int = 60) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 200, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


@pytest.mark.parametrize("ext, tol", [("png", 0.0), ("jpg", 4.0), ("webp", 4.0), ("bmp", 0.0), ("tiff", 0.0)])
def test_formats_round_trip(tmp_path, ext, tol):
    img = quadrants()
    path = write_image(tmp_path / f"q.{ext}", img)
    got = read_image(path)
    assert got.shape == img.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - img).mean() <= tol


def test_rgba_is_composited_over_background(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :4, 3] = 255  # left opaque red
    rgba[:, 4:, 3] = 64  # right mostly transparent red
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    black = read_image(path)
    assert black.shape == (8, 8, 3)
    assert tuple(black[0, 0]) == (255, 0, 0) and tuple(black[0, 7]) == (64, 0, 0)
    white = read_image(path, background=(255, 255, 255))
    assert tuple(white[0, 7]) == (255, 191, 191)


def test_greyscale_and_palette(tmp_path):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))  # (10, 64)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    got = read_image(tmp_path / "g.png")
    assert got.shape == (10, 64, 3) and np.array_equal(got[..., 0], grey) and np.array_equal(got[..., 2], grey)
    Image.fromarray(quadrants()).quantize(8).save(tmp_path / "p.png")
    assert np.abs(read_image(tmp_path / "p.png").astype(int) - quadrants()).mean() < 1.0
    Image.fromarray(grey > 128).save(tmp_path / "bits.png")  # mode "1"
    assert set(np.unique(read_image(tmp_path / "bits.png"))) == {0, 255}


def test_sixteen_bit_greyscale_is_scaled(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = read_image(tmp_path / "g16.png")
    assert got[0, :, 0].tolist() == [0, 1, 128, 255]


def test_sixteen_bit_rgb_png(tmp_path):
    # write a 48-bit RGB PNG by hand: Pillow reads it (as 8-bit RGB)
    import struct
    import zlib

    h, w = 2, 3
    rgb16 = np.zeros((h, w, 3), dtype=">u2")
    rgb16[..., 0] = 65535
    rgb16[1, :, 2] = 32896
    raw = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    (tmp_path / "rgb48.png").write_bytes(png)
    got = read_image(tmp_path / "rgb48.png")
    assert got.shape == (2, 3, 3)
    assert got[0, 0].tolist() == [255, 0, 0] and got[1, 0].tolist() == [255, 0, 128]


@pytest.mark.parametrize("orientation, k", [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, k):
    img = quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(img).save(path, exif=exif, quality=95)
    got = read_image(path)
    expected = np.rot90(img, k=k)  # 6: turn clockwise to display, 8: counter-clockwise, 3: half turn
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).mean() < 4.0


def test_write_is_atomic_and_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="unknown image extension"):
        write_image(tmp_path / "x.nope", quadrants())
    assert list(tmp_path.iterdir()) == []
    write_image(tmp_path / "sub" / "x.png", quadrants())
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]
