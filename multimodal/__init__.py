"""sparse-multimodal: a DeepSeek-V4-style unified multimodal model in PyTorch.

Every public name below is importable from here (``from multimodal import TextToImagePipeline``), but the module
that defines it loads on first use (PEP 562 ``__getattr__``): ``import multimodal`` itself imports neither torch
nor diffusers, PyAV, scikit-learn, scipy, transformers or Triton, so the ``multimodal`` command starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    # backbone
    "Transformer": ".backbone.transformer",
    "TransformerOutput": ".backbone.transformer",
    "BackboneCache": ".backbone.cache",
    "prefill": ".backbone.generate",
    "decode_step": ".backbone.generate",
    "greedy_generate": ".backbone.generate",
    "count_parameters": ".backbone.count",
    "ParameterCount": ".backbone.count",
    # configs
    "BackboneConfig": ".config",
    "AttentionConfig": ".config",
    "MoEConfig": ".config",
    "HyperConfig": ".config",
    "EngramConfig": ".config",
    "NSAConfig": ".config",
    "RopeScaling": ".config",
    "PRESETS": ".config",
    "preset": ".config",
    # checkpoints
    "load_pretrained": ".convert.checkpoint",
    "save_pretrained": ".convert.checkpoint",
    "CheckpointError": ".convert.checkpoint",
    "from_hf_config": ".convert.hf_config",
    "to_hf_config": ".convert.hf_config",
    # tokenizers and media
    "TextTokenizer": ".tokenizers.text",
    "AutoencoderConfig": ".tokenizers.config",
    "CausalAutoencoder": ".tokenizers.autoencoder",
    "ImageTokenizer": ".tokenizers.image",
    "VideoTokenizer": ".tokenizers.video",
    "VisualTokens": ".tokenizers.video",
    "MediaError": ".io.errors",
    "read_video": ".io.video_reader",
    "iter_frames": ".io.video_reader",
    "probe_video": ".io.video_reader",
    "write_video": ".io.video_writer",
    "VideoWriter": ".io.video_writer",
    "read_image": ".io.image",
    "write_image": ".io.image",
    # world and scorer
    "WorldDataConfig": ".data.datasets",
    "WorldDataset": ".data.datasets",
    "WorldSample": ".data.world",
    "collate_world": ".data.datasets",
    "caption_errors": ".eval.captions",
    "parse_caption": ".eval.captions",
    "parse_frames": ".eval.scene",
    "render_sample": ".data.render",
    "sample_image": ".data.world",
    "sample_video": ".data.world",
    "score_captions": ".eval.metrics",
    "score_frames": ".eval.scorer",
    "QualitySettings": ".eval.quality",
    "quality_report": ".eval.quality",
    # unified model, heads, pipelines
    "UnifiedModel": ".model",
    "ModelConfig": ".model",
    "Segment": ".model",
    "model_preset": ".model",
    "FlowHeadConfig": ".decoders.flow",
    "GenerationConfig": ".decoders.text",
    "TextToImagePipeline": ".pipelines.base",
    "TextToVideoPipeline": ".pipelines.base",
    "VideoCaptionPipeline": ".pipelines.base",
    "ImageCaptionPipeline": ".pipelines.base",
    "TextGenerationPipeline": ".pipelines.base",
    "export_to_video": ".pipelines.output",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the module defining `name` on first access and keep the value here (later lookups are plain)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'multimodal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static checkers and IDEs see; nothing here runs
    from .backbone.cache import BackboneCache
    from .backbone.count import ParameterCount, count_parameters
    from .backbone.generate import decode_step, greedy_generate, prefill
    from .backbone.transformer import Transformer, TransformerOutput
    from .config import (AttentionConfig, BackboneConfig, EngramConfig, HyperConfig, MoEConfig, NSAConfig, PRESETS,
                         RopeScaling, preset)
    from .convert.checkpoint import CheckpointError, load_pretrained, save_pretrained
    from .convert.hf_config import from_hf_config, to_hf_config
    from .data.datasets import WorldDataConfig, WorldDataset, collate_world
    from .data.render import render_sample
    from .data.world import WorldSample, sample_image, sample_video
    from .decoders.flow import FlowHeadConfig
    from .decoders.text import GenerationConfig
    from .eval.captions import caption_errors, parse_caption
    from .eval.metrics import score_captions
    from .eval.quality import QualitySettings, quality_report
    from .eval.scene import parse_frames
    from .eval.scorer import score_frames
    from .io.errors import MediaError
    from .io.image import read_image, write_image
    from .io.video_reader import iter_frames, probe_video, read_video
    from .io.video_writer import VideoWriter, write_video
    from .model import ModelConfig, Segment, UnifiedModel, model_preset
    from .pipelines.base import (ImageCaptionPipeline, TextGenerationPipeline, TextToImagePipeline, TextToVideoPipeline,
                                 VideoCaptionPipeline)
    from .pipelines.output import export_to_video
    from .tokenizers.autoencoder import CausalAutoencoder
    from .tokenizers.config import AutoencoderConfig
    from .tokenizers.image import ImageTokenizer
    from .tokenizers.text import TextTokenizer
    from .tokenizers.video import VideoTokenizer, VisualTokens
