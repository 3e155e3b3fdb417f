"""Image and video tokenizers: preprocessing, patchify positions, exact inverses, files in, frames out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.io import write_video
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.tokenizers.image import ImageTokenizer
from multimodal.tokenizers.patchify import grid_positions, patchify, unpatchify
from multimodal.tokenizers.preprocess import cover_size, normalize_frames
from multimodal.tokenizers.video import VideoTokenizer, padded_length


@pytest.fixture(scope="module")
def ae() -> CausalAutoencoder:
    torch.manual_seed(0)
    m = CausalAutoencoder(AutoencoderConfig(channels=(8, 16, 16))).eval()
    with torch.no_grad():
        m.set_latent_statistics(torch.randn(2, 16, 1, 4, 4) * 2 + 0.5)
    return m


def test_patchify_is_exactly_inverted():
    z = torch.randn(2, 16, 3, 8, 6)
    tokens, pos = patchify(z, 2)
    assert tokens.shape == (2, 3 * 4 * 3, 64) and pos.shape == (36, 3)
    assert torch.equal(unpatchify(tokens, (3, 4, 3), 2), z)
    # token 0 holds latent[:, :, 0, 0:2, 0:2]; the token at (t=1, row=2, col=1) is index 1*12 + 2*3 + 1
    assert torch.equal(tokens[:, 0].reshape(2, 16, 2, 2), z[:, :, 0, 0:2, 0:2])
    assert pos[19].tolist() == [1, 2, 1]
    assert torch.equal(tokens[:, 19].reshape(2, 16, 2, 2), z[:, :, 1, 4:6, 2:4])
    assert torch.equal(grid_positions(3, 4, 3), pos)
    with pytest.raises(ValueError, match="grid"):
        unpatchify(tokens, (2, 4, 3), 2)


def test_cover_and_centre_crop():
    assert cover_size(1080, 1920, (64, 64)) == (64, 114)
    assert cover_size(200, 100, (64, 64)) == (128, 64)
    # 100 x 200 image: thirds red | green | blue. Scaled to 64 x 128, columns 32..95 are kept.
    img = np.zeros((100, 200, 3), dtype=np.uint8)
    img[:, :67] = (255, 0, 0)
    img[:, 67:133] = (0, 255, 0)
    img[:, 133:] = (0, 0, 255)
    x = normalize_frames([img], (64, 64))[0]  # (3, 64, 64) in [-1, 1]
    assert x.shape == (3, 64, 64) and x.min() >= -1 and x.max() <= 1
    red, green, blue = (x[c].mean(dim=0) > 0 for c in range(3))  # per column
    assert red[:9].all() and not red[12:].any()  # red ends near column 42.9 - 32
    assert green[13:52].all() and blue[55:].all() and not blue[:50].any()
    assert torch.allclose(x[:, 0, :], x[:, 63, :])  # rows untouched: vertical content is uniform


def test_image_tokens_positions_and_inverse(ae):
    tok = ImageTokenizer(ae, resolution=(32, 48), patch_size=2)
    images = [np.random.default_rng(i).integers(0, 255, (50, 70, 3), dtype=np.uint8) for i in range(3)]
    enc = tok.encode(images)
    assert tok.grid == (1, 2, 3) and tok.num_tokens == 6 and tok.token_dim == 64
    assert enc.tokens.shape == (3, 6, 64)
    assert enc.positions.tolist() == [[0, r, c] for r in range(2) for c in range(3)]
    # the inverse of patchify + standardisation is exact: tokens -> latents == the encoder's latents
    x = tok.preprocess(images)
    assert torch.allclose(tok.tokens_to_latents(enc), ae.encode(x), atol=1e-5)
    out = tok.decode(enc)
    assert out.shape == (3, 32, 48, 3) and out.dtype == np.uint8
    assert torch.allclose(tok.decode(enc, output_type="pt"), ae.decode(ae.encode(x))[:, :, 0], atol=1e-5)
    assert len(tok.decode(enc, output_type="pil")) == 3


def test_image_inputs_of_every_kind_agree(ae, tmp_path):
    tok = ImageTokenizer(ae, resolution=32)
    arr = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    as_array = tok.preprocess(arr)
    assert torch.equal(tok.preprocess(Image.fromarray(arr)), as_array)
    assert torch.equal(tok.preprocess(tmp_path / "x.png"), as_array)
    assert torch.equal(tok.preprocess(torch.from_numpy(arr).permute(2, 0, 1)), as_array)
    assert torch.allclose(tok.preprocess(torch.from_numpy(arr).permute(2, 0, 1).float() / 255), as_array, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 8"):
        ImageTokenizer(ae, resolution=40)


def test_video_padding_positions_and_trim(ae):
    assert [padded_length(t) for t in (1, 2, 5, 6, 9, 16, 17)] == [1, 5, 5, 9, 9, 17, 17]
    tok = VideoTokenizer(ae, resolution=32, patch_size=2)
    clip = np.random.default_rng(1).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)  # 7 -> padded to 9
    enc = tok.encode(clip)
    assert enc.grid == (3, 2, 2) and enc.num_frames == 7
    assert enc.tokens.shape == (1, 12, 64)
    assert enc.positions[:, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    x, t = tok.preprocess(clip)
    assert t == 7 and x.shape == (1, 3, 9, 32, 32) and torch.equal(x[:, :, 8], x[:, :, 6])  # last frame repeated
    assert torch.allclose(tok.tokens_to_latents(enc), ae.encode(x), atol=1e-5)
    out = tok.decode(enc)
    assert out.shape == (1, 7, 32, 32, 3)
    assert tok.decode(enc.tokens, num_frames=9).shape == (1, 9, 32, 32, 3)  # bare tensors: grid from length


def test_one_frame_video_equals_image(ae):
    frame = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    image = ImageTokenizer(ae, resolution=32).encode(frame)
    video = VideoTokenizer(ae, resolution=32).encode(frame[None])
    assert torch.allclose(image.tokens, video.tokens, atol=1e-6) and torch.equal(image.positions, video.positions)


def test_video_from_file_with_sampling(ae, tmp_path):
    clip = np.zeros((33, 48, 80, 3), dtype=np.uint8)
    for i in range(33):
        clip[i, 10:30, 2 * i : 2 * i + 12] = (0, 200, 0)
    path = write_video(tmp_path / "wide.mp4", clip, fps=8)
    uniform = VideoTokenizer(ae, resolution=32, num_frames=9)
    x, t = uniform.preprocess(str(path))
    assert t == 9 and x.shape == (1, 3, 9, 32, 32)
    timed = VideoTokenizer(ae, resolution=32, fps=2)  # 33 frames at 8 fps = 4.125 s -> 9 frames at 2 fps
    xt, tt = timed.preprocess(path)
    assert tt == 9
    assert torch.allclose(x, xt, atol=0.05)  # the same frames 0, 4, ..., 32 both ways
    assert timed.encode(path).tokens.shape == (1, 3 * 4, 64)
