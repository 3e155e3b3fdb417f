"""The shared config checks: every config dataclass names unknown keys the same way."""

import pytest

from multimodal.config import BackboneConfig
from multimodal.config_keys import check, reject_unknown_keys
from multimodal.decoders.flow import FlowHeadConfig
from multimodal.model import ModelConfig
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.training.config import TrainConfig


def test_check_and_unknown_keys():
    check(True, "never raised")
    with pytest.raises(ValueError, match="^width must be > 0$"):
        check(False, "width must be > 0")
    reject_unknown_keys(FlowHeadConfig, {"width": 64})
    with pytest.raises(ValueError, match=r"^unknown head keys: \['a', 'b'\]$"):
        reject_unknown_keys(FlowHeadConfig, {"b": 1, "width": 64, "a": 2}, "head")


@pytest.mark.parametrize("cls", [BackboneConfig, FlowHeadConfig, ModelConfig, AutoencoderConfig, TrainConfig])
def test_every_config_names_its_unknown_keys(cls):
    with pytest.raises(ValueError, match=rf"unknown {cls.__name__} keys: \['not_a_field'\]"):
        cls.from_dict({"not_a_field": 1})
