"""sparse-multimodal: a DeepSeek-V4-style unified multimodal model in PyTorch."""

__version__ = "0.1.0"

from .backbone.cache import BackboneCache
from .backbone.count import ParameterCount, count_parameters
from .backbone.generate import decode_step, greedy_generate, prefill
from .backbone.transformer import Transformer, TransformerOutput
from .config import AttentionConfig, BackboneConfig, HyperConfig, MoEConfig, PRESETS, RopeScaling, preset
from .convert.checkpoint import CheckpointError, load_pretrained, save_pretrained
from .convert.hf_config import from_hf_config, to_hf_config

__all__ = [
    "__version__",
    # backbone
    "Transformer", "TransformerOutput", "BackboneCache", "prefill", "decode_step", "greedy_generate",
    "count_parameters", "ParameterCount",
    # configs
    "BackboneConfig", "AttentionConfig", "MoEConfig", "HyperConfig", "RopeScaling", "PRESETS", "preset",
    # checkpoints
    "load_pretrained", "save_pretrained", "CheckpointError", "from_hf_config", "to_hf_config",
]
