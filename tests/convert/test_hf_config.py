"""Hugging Face config.json <-> ours, for V3, V3.2 and V4, through transformers' own config classes."""

from __future__ import annotations

import pytest

from multimodal.config import preset
from multimodal.convert.hf_config import from_hf_config, to_hf_config

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name, cls", [("deepseek-v4-flash", "DeepseekV4Config"), ("deepseek-v4-pro", "DeepseekV4Config"),
                                       ("deepseek-v3", "DeepseekV3Config"), ("deepseek-v3.2", "DeepseekV32Config")])
def test_ours_to_hf_to_ours_is_identity(name, cls):
    ours = preset(name)
    hf = getattr(transformers, cls)(**to_hf_config(ours))       # transformers accepts and validates it
    assert from_hf_config(hf.to_dict()) == ours


def test_transformers_default_v4_config_converts():
    hf = transformers.DeepseekV4Config().to_dict()
    ours = from_hf_config(hf)
    assert ours.hidden_size == 4096 and ours.attention.head_dim == 512 and ours.attention.qk_rope_head_dim == 64
    assert ours.attention.rope_scaling is None or ours.attention.rope_scaling.attention_factor == 1.0
    again = to_hf_config(ours)
    for key in ("hidden_size", "num_hidden_layers", "layer_types", "mlp_layer_types", "o_groups", "index_topk",
                "hc_mult", "sliding_window", "compress_rates", "n_routed_experts"):
        assert again[key] == hf[key], key


def test_legacy_v4_keys_are_understood():
    hf = transformers.DeepseekV4Config(num_hidden_layers=4).to_dict()
    for key in ("layer_types", "mlp_layer_types", "compress_rates"):
        hf.pop(key)
    hf.update(compress_ratios=[0, 4, 128, 4], num_hash_layers=1, compress_rate_csa=4, compress_rate_hca=128)
    ours = from_hf_config(hf)
    assert ours.layer_types == ["sliding_attention", "compressed_sparse_attention",
                                "heavily_compressed_attention", "compressed_sparse_attention"]
    assert ours.mlp_layer_types == ["hash_moe", "moe", "moe", "moe"]


def test_unsupported_model_type_is_named():
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        from_hf_config({"model_type": "llama"})
