"""The shipped digit classifier: safetensors weights, accuracy on unseen glyphs, deterministic training."""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from multimodal.data.glyphs import glyph_labels, is_test_glyph
from multimodal.eval.digits import (DEFAULT_WEIGHTS, DigitClassifier, DigitTrainingConfig, accuracy, augment_crops,
                                    glyph_crops, train_digit_classifier)


def test_shipped_weights_are_safetensors_and_read_unseen_glyphs():
    with safe_open(str(DEFAULT_WEIGHTS), framework="pt") as f:
        assert set(f.keys()) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    clf = DigitClassifier.load()
    crops, labels = glyph_crops(True, colours_per_glyph=1, mp4_fraction=0.0, seed=3)
    assert len(labels) == 2 * int(sum(is_test_glyph(i) for i in range(len(glyph_labels()))))  # 360 glyphs x 2 sizes
    assert accuracy(clf, crops, labels) >= 0.97


def test_training_is_deterministic_and_learns(tmp_path):
    cfg = DigitTrainingConfig(epochs=2, colours_per_glyph=1, mp4_fraction=0.0, seed=5)
    a, b = train_digit_classifier(cfg), train_digit_classifier(cfg)
    for (k, va), (_, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(va, vb), k
    crops, labels = glyph_crops(True, colours_per_glyph=1, mp4_fraction=0.0, seed=3)
    assert accuracy(a, crops, labels) > 0.8  # two short epochs already read most unseen glyphs
    a.save(tmp_path / "d.safetensors")
    c = DigitClassifier.load(tmp_path / "d.safetensors")
    assert [d for d, _ in c.predict(crops[:50])] == [d for d, _ in a.predict(crops[:50])]


def test_augmentation_bends_a_share_of_the_crops():
    crops, _ = glyph_crops(False, colours_per_glyph=1, mp4_fraction=0.0, seed=3)
    x = torch.from_numpy(crops[:400])[:, None]
    none = DigitTrainingConfig(augment_fraction=0.0)
    assert torch.equal(augment_crops(x, none, torch.Generator().manual_seed(0)), x)
    still = DigitTrainingConfig(augment_fraction=1.0, max_rotation=0, max_shear=0, max_scale=0, max_shift=0)
    torch.testing.assert_close(augment_crops(x, still, torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=0)
    cfg = DigitTrainingConfig()
    bent = augment_crops(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(bent, augment_crops(x, cfg, torch.Generator().manual_seed(0)))     # seeded
    changed = (bent - x).abs().flatten(1).amax(1) > 1e-3
    assert 0.65 < changed.float().mean() < 0.85                                         # ~augment_fraction
    mass = bent.flatten(1).sum(1)[changed] / x.flatten(1).sum(1)[changed]
    assert 0.6 < float(mass.min()) and float(mass.max()) < 1.4                            # small warps only


def test_bad_configs_and_missing_weights():
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        DigitTrainingConfig(epochs=0)
    with pytest.raises(ValueError, match="colours_per_glyph"):
        DigitTrainingConfig(colours_per_glyph=9)
    with pytest.raises(ValueError, match="augment_fraction"):
        DigitTrainingConfig(augment_fraction=2.0)
    with pytest.raises(ValueError, match="max_shift"):
        DigitTrainingConfig(max_shift=-1.0)
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        DigitClassifier.load("nowhere.safetensors")
