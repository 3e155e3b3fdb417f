"""The convolutional stem over the latents (`visual_stem.py`): a new stem leaves a model's function unchanged (its
projection starts at zero), its convolutions share weights across positions, it trains, and it saves and loads."""

from __future__ import annotations

import pytest
import torch

from multimodal.model import ModelConfig, UnifiedModel, model_preset
from multimodal.visual_stem import VisualStem

torch.set_num_threads(1)


def _latents(b: int = 2, t: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 16, t, 8, 8, generator=torch.Generator().manual_seed(seed))


def _captions(model: UnifiedModel, latents: torch.Tensor, kind: str) -> torch.Tensor:
    ids = model.config.token_ids
    return model.caption_loss([z for z in latents], kind, [[ids.bos, 20, 21, 22, ids.eos]] * len(latents))


def test_a_new_stem_leaves_the_model_unchanged_until_trained():
    torch.manual_seed(0)
    plain = UnifiedModel(model_preset("debug")).eval()
    stemmed = UnifiedModel(model_preset("debug").replace(visual_stem=8)).eval()
    missing, unexpected = stemmed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("visual_stem.") for k in missing)
    for kind, t in (("image", 1), ("video", 3)):
        z = _latents(t=t)
        assert torch.equal(stemmed.embed_visual(z, kind), plain.embed_visual(z, kind))
        with torch.no_grad():
            assert torch.equal(_captions(stemmed, z, kind), _captions(plain, z, kind))
    # its gradient reaches the zero projection first, then the convolutions
    stemmed.train()
    _captions(stemmed, _latents(), "image").backward()
    assert stemmed.visual_stem.out.weight.grad.abs().sum() > 0
    assert stemmed.visual_stem.conv1.weight.grad.abs().sum() == 0              # behind a zero projection
    with torch.no_grad():
        stemmed.visual_stem.out.weight.normal_(std=0.1)
        assert not torch.equal(stemmed.embed_visual(_latents(), "image"), plain.embed_visual(_latents(), "image"))


def test_the_stem_shares_its_weights_across_positions():
    torch.manual_seed(1)
    stem = VisualStem(latent_channels=16, width=8, patch_size=2, dim=32)
    z = _latents(b=1, t=2)
    moved = torch.roll(z, shifts=(1, 2), dims=(3, 4))               # one cell down, two right
    # cells whose 5 x 5 receptive field lies inside the grid in both, and off the rolled-in row and columns
    a, b = stem.features(z)[..., 2:5, 2:4], stem.features(moved)[..., 3:6, 4:6]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(stem.features(z)[..., 2:5, 2:4], stem.features(moved)[..., 2:5, 2:4])
    assert stem(z).shape == (1, 2 * 4 * 4, 32) and stem(z).abs().max() == 0      # zero at init
    with pytest.raises(ValueError, match="visual stem width must be > 0"):
        VisualStem(16, 0, 2, 32)


def test_save_and_load_keep_the_stem(tmp_path):
    torch.manual_seed(2)
    model = UnifiedModel(model_preset("debug").replace(visual_stem=8)).eval()
    with torch.no_grad():
        model.visual_stem.out.weight.normal_(std=0.1)
    model.save_pretrained(tmp_path / "m")
    again = UnifiedModel.from_pretrained(tmp_path / "m")
    assert again.config.visual_stem == 8
    z = _latents(t=2)
    assert torch.equal(again.embed_visual(z, "video"), model.embed_visual(z, "video"))
    # a model saved before stems existed (no key) loads as one without a stem
    data = model_preset("debug").to_dict()
    del data["visual_stem"]
    assert ModelConfig.from_dict(data).visual_stem == 0
    with pytest.raises(ValueError, match="visual_stem must be >= 0"):
        model_preset("debug").replace(visual_stem=-1)
