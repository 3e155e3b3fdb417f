"""Checkpoint folders: sharded round trips, transformers reading what we write, FP8 dequantisation, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from multimodal.config import preset
from multimodal.convert.checkpoint import CheckpointError, load_pretrained, save_pretrained
from multimodal.convert.fp8 import dequantize_blockwise, quantize_blockwise

from ..backbone.random_model import random_model


@pytest.fixture(scope="module")
def model():
    # 8 indexer heads: exact ties among ReLU index scores (which the reference's topk breaks arbitrarily) stay rare
    return random_model(preset("debug").replace(num_nextn_predict_layers=0, attention={"index_n_heads": 8}), seed=4)


def _logits(m, seed=0):
    ids = torch.randint(0, 512, (2, 19), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return m(ids).logits


def test_sharded_round_trip_is_exact(model, tmp_path):
    save_pretrained(model, tmp_path, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((tmp_path / s).exists() for s in shards)
    assert "model.layers.0.ffn.experts.3.w2.weight" in index["weight_map"]      # DeepSeek's per-expert layout
    assert not [p.name for p in tmp_path.iterdir() if ".part" in p.name]      # no temporary files left
    again = load_pretrained(tmp_path)
    assert torch.equal(_logits(again), _logits(model))


def test_transformers_reads_what_we_write(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_pretrained(model, tmp_path)
    hf = transformers.DeepseekV4ForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 512, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
    assert (expected - _logits(model)).abs().max() <= 1e-4 * expected.abs().max()


def test_fp8_block_scaled_weights_are_dequantized(model, tmp_path):
    save_pretrained(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    key = "model.layers.1.attn.wq_b.weight"
    q, scale = quantize_blockwise(tensors[key], block=128)
    tensors[key], tensors[key + "_scale_inv"] = q, scale
    save_file(tensors, tmp_path / "model.safetensors")
    loaded = load_pretrained(tmp_path)
    expected = dequantize_blockwise(q, scale)
    assert torch.equal(loaded.layers[1].attn.wq_b.weight, expected)
    rel = (expected - model.layers[1].attn.wq_b.weight).abs().max() / model.layers[1].attn.wq_b.weight.abs().max()
    assert 0 < rel < 0.07                                    # e4m3 keeps 3 mantissa bits


def test_blockwise_dequantization_uses_each_tiles_scale():
    q = torch.ones(130, 260).to(torch.float8_e4m3fn)
    scale = torch.arange(6, dtype=torch.float32).view(2, 3)
    w = dequantize_blockwise(q, scale)
    assert w[0, 0] == 0 and w[0, 128] == 1 and w[0, 259] == 2 and w[129, 0] == 3 and w[129, 259] == 5


def test_missing_and_unexpected_keys_are_listed(model, tmp_path):
    save_pretrained(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.pop("model.layers.2.attn.wkv.weight")
    tensors["model.layers.9.attn.wkv.weight"] = torch.zeros(1)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    assert "missing keys ['layers.2.attn.wkv.weight']" in str(err.value)
    assert "unexpected keys ['layers.9.attn.wkv.weight']" in str(err.value)


def test_a_folder_without_config_or_weights_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(preset("debug").to_dict()))
    with pytest.raises(CheckpointError, match="no \\*.safetensors weights"):
        load_pretrained(tmp_path)


def test_mtp_modules_round_trip_and_a_checkpoint_without_them_loads_without_them(tmp_path):
    with_mtp = random_model(preset("debug"), seed=5)        # one MTP module, with its own mHC collapse
    save_pretrained(with_mtp, tmp_path / "a")
    again = load_pretrained(tmp_path / "a")
    assert len(again.mtp) == 1
    for (k, v), (k2, v2) in zip(with_mtp.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        assert torch.equal(again.mtp_loss(ids, again(ids).hidden_states), with_mtp.mtp_loss(ids, with_mtp(ids).hidden_states))
    tensors = {k: v for k, v in load_file(tmp_path / "a" / "model.safetensors").items() if ".mtp." not in k}
    (tmp_path / "b").mkdir()
    save_file(tensors, tmp_path / "b" / "model.safetensors")
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    assert len(load_pretrained(tmp_path / "b").mtp) == 0
