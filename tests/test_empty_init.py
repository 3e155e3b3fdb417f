"""empty_init: random initialisers are skipped inside the block, everything else runs, and a model loaded through it equals
one built normally and loaded; a file missing a weight is still an error."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from multimodal.empty_init import empty_init
from multimodal.model import UnifiedModel, model_preset
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig


def test_initialisers_are_skipped_and_other_ops_run():
    w = torch.zeros(4, 3)
    with empty_init():
        for init in (nn.init.normal_, nn.init.uniform_, nn.init.kaiming_uniform_, nn.init.xavier_normal_,
                     nn.init.trunc_normal_):
            assert init(w) is w
        assert nn.init.normal_(tensor=w, std=3.0) is w
        w.normal_()
        w.uniform_()
        ones, steps = torch.ones(3), torch.arange(4)
        w2 = nn.init.ones_(torch.zeros(2))                            # constant fills are cheap: they run
    assert w.abs().sum() == 0                                         # untouched
    assert ones.tolist() == [1.0, 1.0, 1.0] and steps.tolist() == [0, 1, 2, 3] and w2.tolist() == [1.0, 1.0]
    nn.init.ones_(w)                                                  # outside the block initialisers run again
    assert w.sum() == 12


def test_loaded_models_equal_models_built_normally(tmp_path):
    torch.manual_seed(0)
    model = UnifiedModel(model_preset("debug")).eval()
    model.save_pretrained(tmp_path / "m")
    again = UnifiedModel.from_pretrained(tmp_path / "m")
    ref, got = model.state_dict(), again.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    rotary = dict(model.named_buffers(remove_duplicate=False))
    for name, buf in again.named_buffers(remove_duplicate=False):     # non-persistent buffers (rotary tables) too
        assert torch.equal(buf, rotary[name]), name
    ae = CausalAutoencoder(AutoencoderConfig(channels=(8, 16, 16), norm_groups=4, decoder_blocks=(1, 1, 1))).eval()
    ae.save_pretrained(tmp_path / "ae.safetensors")
    loaded = CausalAutoencoder.from_pretrained(tmp_path / "ae.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(ae.state_dict().values(), loaded.state_dict().values()))

    # a file without one of the weights: an error, never an uninitialised parameter
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    tensors.pop(next(k for k in tensors if k.endswith("norm.weight")))
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ValueError, match="weights do not fit the config: missing"):
        UnifiedModel.from_pretrained(tmp_path / "m")
