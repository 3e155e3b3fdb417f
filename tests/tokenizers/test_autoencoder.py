"""Causal 3D autoencoder: shapes, causality, chunked == whole, image == one-frame video, weights I/O."""

from __future__ import annotations

import pytest
import torch

from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig


@pytest.fixture(scope="module")
def model() -> CausalAutoencoder:
    torch.manual_seed(0)
    m = CausalAutoencoder(AutoencoderConfig(channels=(16, 24, 32), chunk_frames=8)).eval()
    with torch.no_grad():  # non-zero temporal mixing, so causality and chunking are really exercised
        for name, p in m.named_parameters():
            if "temporal.conv" in name:
                p.normal_(0, 0.1)
        m.set_latent_statistics(torch.randn(4, 16, 3, 2, 2) * 3 + 1)
    return m


@pytest.mark.parametrize("frames, latent_frames", [(1, 1), (5, 2), (9, 3), (17, 5)])
def test_compression_shapes(model, frames, latent_frames):
    x = torch.rand(2, 3, frames, 32, 48) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 16, latent_frames, 4, 6)
    assert model.decode(z).shape == (2, 3, frames, 32, 48)


def test_bad_shapes_are_named(model):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        model.encode(torch.zeros(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(torch.zeros(1, 3, 1, 30, 32))
    with pytest.raises(ValueError, match="latents"):
        model.decode(torch.zeros(1, 8, 1, 4, 4))
    with pytest.raises(ValueError, match="chunk_frames"):
        AutoencoderConfig(chunk_frames=6)
    with pytest.raises(ValueError, match="norm_groups"):
        AutoencoderConfig(channels=(12, 24, 32))


@torch.no_grad()
def test_encoder_and_decoder_are_causal(model):
    x = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    y = x.clone()
    y[:, :, 9:] = torch.rand_like(y[:, :, 9:])  # change frames 9..16
    zx, zy = model.encode(x), model.encode(y)
    assert torch.equal(zx[:, :, :3], zy[:, :, :3])  # latents 0..2 cover frames 0..8
    assert (zx[:, :, 3:] - zy[:, :, 3:]).abs().max() > 1e-3
    dx = model.decode(zx)
    zz = zx.clone()
    zz[:, :, 3:] += 1.0
    dz = model.decode(zz)
    assert torch.equal(dx[:, :, :9], dz[:, :, :9])  # pixels 0..8 come from latents 0..2 only


@torch.no_grad()
def test_image_is_the_first_frame_of_a_video(model):
    x = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    z_video = model.encode(x)
    z_image = model.encode(x[:, :, :1])
    assert torch.allclose(z_video[:, :, :1], z_image, atol=1e-5)
    assert torch.allclose(model.decode(z_video)[:, :, :1], model.decode(z_image), atol=1e-5)


@pytest.mark.parametrize("chunk", [4, 8, 12])
@torch.no_grad()
def test_chunked_equals_whole(model, chunk):
    x = torch.rand(1, 3, 25, 16, 16) * 2 - 1
    whole = model.encode(x, chunk_frames=None)
    chunked = model.encode(x, chunk_frames=chunk)
    assert torch.allclose(whole, chunked, atol=1e-5)
    assert torch.allclose(model.decode(whole, chunk_frames=None), model.decode(whole, chunk_frames=chunk), atol=1e-5)


def test_gradients_flow_in_training_mode():
    m = CausalAutoencoder(AutoencoderConfig(channels=(8, 16, 16)))
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    rec, mean, logvar = m(x, generator=torch.Generator().manual_seed(0))
    assert rec.shape == x.shape and mean.shape == logvar.shape == (1, 16, 2, 2, 2)
    assert logvar.mean() < -4  # the posterior starts narrow
    (rec - x).pow(2).mean().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if "temporal" not in n)


@torch.no_grad()
def test_latent_normalisation_round_trip(model):
    z = torch.randn(3, 16, 2, 4, 4) * 3 + 1
    assert torch.allclose(model.denormalize_latents(model.normalize_latents(z)), z, atol=1e-5)
    m = CausalAutoencoder(AutoencoderConfig(channels=(8, 16, 16)))
    m.set_latent_statistics(z)
    n = m.normalize_latents(z)
    assert n.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-4
    assert (n.transpose(0, 1).reshape(16, -1).std(dim=1) - 1).abs().max() < 1e-4


def test_save_and_load_safetensors(model, tmp_path):
    path = model.save_pretrained(tmp_path / "ae.safetensors", metadata={"note": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["ae.safetensors"]  # no temp file left
    again = CausalAutoencoder.from_pretrained(path)
    assert again.config == model.config and again.metadata["note"] == "test"
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert torch.allclose(again.encode(x), model.encode(x), atol=1e-6)
    assert torch.equal(again.latent_std, model.latent_std)
    half = model.save_pretrained(tmp_path / "half.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    assert torch.allclose(CausalAutoencoder.from_pretrained(half).encode(x), model.encode(x), atol=5e-2)
    with pytest.raises(FileNotFoundError):
        CausalAutoencoder.from_pretrained(tmp_path / "missing.safetensors")
    assert CausalAutoencoder.read_metadata(path)["config"]["channels"] == [16, 24, 32]
