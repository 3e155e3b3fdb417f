"""Configs: presets, parameter counts against the published figures, JSON round trips, validation errors."""

from __future__ import annotations

import json

import pytest

from multimodal.backbone.count import count_parameters
from multimodal.config import PRESETS, BackboneConfig, preset

# published figures (DeepSeek-V3 report; DeepSeek-V4 model cards): (total, activated)
PUBLISHED = {"deepseek-v3": (671e9, 37e9), "deepseek-v4-flash": (284e9, 13e9), "deepseek-v4-pro": (1.6e12, 49e9)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts(name):
    count = count_parameters(preset(name))
    total, activated = PUBLISHED[name]
    # within 1% of the figure, or within the interval the figure's two significant digits allow
    # (V3's 36.6B activated, V4-Flash's 13.3B and V4-Pro's 1.57T are all published rounded; see README)
    for ours, published, interval in ((count.total, total, 0.05e12 if total >= 1e12 else 0.5e9),
                                      (count.activated, activated, 0.5e9)):
        assert abs(ours - published) <= max(0.01 * published, interval), (name, ours, published)


def test_v3_counts_exact_to_its_report():
    count = count_parameters(preset("deepseek-v3"))
    assert abs(count.total - 671e9) / 671e9 < 0.001          # 671.03B
    assert 36.5e9 <= count.activated < 37.5e9                  # rounds to 37B


def test_every_preset_round_trips_through_json(tmp_path):
    for name in PRESETS:
        cfg = preset(name)
        cfg.save(tmp_path / f"{name}.json")
        assert BackboneConfig.load(tmp_path / f"{name}.json") == cfg
        assert json.loads((tmp_path / f"{name}.json").read_text())["attention"]["num_attention_heads"] > 0


@pytest.mark.parametrize("changes, message", [
    (dict(attention={"num_attention_heads": 6, "o_groups": 4}), "num_attention_heads (6) must be divisible by"),
    (dict(moe={"num_experts_per_tok": 9}), "num_experts_per_tok (9)"),
    (dict(layer_types=["sliding_attention", "linear_attention", "mla"]), "unknown layer_types ['linear_attention']"),
    (dict(mlp_layer_types=["moe"]), "len(mlp_layer_types) (1) must equal num_hidden_layers (3)"),
    (dict(moe={"scoring_func": "relu"}), "moe.scoring_func must be one of"),
    (dict(attention={"index_topk": 0}), "attention.index_topk must be > 0, got 0"),
    (dict(moe={"n_group": 3}), "must be divisible by moe.n_group (3)"),
])
def test_invalid_configs_name_the_bad_values(changes, message):
    with pytest.raises(ValueError) as err:
        preset("debug").replace(**changes)
    assert message in str(err.value)


def test_unknown_keys_and_presets_are_rejected():
    with pytest.raises(ValueError, match="unknown BackboneConfig keys: \\['hiden_size'\\]"):
        BackboneConfig.from_dict({**preset("debug").to_dict(), "hiden_size": 3})
    with pytest.raises(ValueError, match="unknown preset 'v5'"):
        preset("v5")
