"""The autoencoder weights shipped in the package: they load with safetensors and reconstruct the
shapes world's test split (16 images, 4 videos of 17 frames, 64x64) above a PSNR floor.

The floors sit 1 dB under what the shipped weights measure on this subset (34.5 dB images, 30.5 dB
videos). On 64 images / 16 videos they measure 32.9 dB and 31.5 dB (stored in the file's metadata), on
200 / 50 32.1 dB and 32.2 dB: above the issue's targets of 32 dB and 30 dB (README.md).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from multimodal.tokenizers.autoencoder import DEFAULT_WEIGHTS, CausalAutoencoder
from multimodal.training.autoencoder import evaluate_psnr

IMAGE_PSNR_FLOOR = 33.5
VIDEO_PSNR_FLOOR = 29.5


@pytest.fixture(scope="module")
def shipped() -> CausalAutoencoder:
    torch.set_num_threads(2)
    return CausalAutoencoder.from_pretrained()


def test_weights_are_small_safetensors():
    path = resources.files("multimodal.assets").joinpath(DEFAULT_WEIGHTS)
    data = path.read_bytes()
    assert len(data) < 5 * 2**20
    header_len = int.from_bytes(data[:8], "little")
    assert data[8:9] == b"{" and header_len < len(data)  # a safetensors header, not a pickle


def test_stored_once_as_the_built_in_models_vae():
    """One autoencoder file in the package, fp16 (lossless for these weights): the built-in pipeline's vae, which is
    also the default of `CausalAutoencoder.from_pretrained()`."""
    assets = Path(str(resources.files("multimodal.assets")))
    autoencoders = [f.relative_to(assets).as_posix() for f in sorted(assets.rglob("*.safetensors"))
                    if "latent_channels" in CausalAutoencoder.read_metadata(f).get("config", {})]
    assert autoencoders == [DEFAULT_WEIGHTS] == ["pipelines/shapes-demo/vae/autoencoder.safetensors"]
    with safe_open(str(assets / DEFAULT_WEIGHTS), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_shipped_latent_statistics_are_set(shipped):
    assert shipped.config.latent_channels == 16
    assert not torch.equal(shipped.latent_std, torch.ones(16)) and (shipped.latent_std > 0).all()


def test_test_split_psnr(shipped):
    scores = evaluate_psnr(shipped, num_images=16, num_videos=4, video_frames=17, split="test")
    assert scores["image_psnr"] >= IMAGE_PSNR_FLOOR, scores
    assert scores["video_psnr"] >= VIDEO_PSNR_FLOOR, scores
