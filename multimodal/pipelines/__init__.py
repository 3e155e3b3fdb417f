"""Diffusers-style pipelines over one unified model: text-to-image, text-to-video, captioning, text generation.

Names load on first use (PEP 562), as in the top-level package: importing this package does not import diffusers.
The public pipelines are in base.py; each task's logic, which runs without diffusers, in its own module (core.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "BUILTIN_MODELS": ".core",
    "ModelNotFoundError": ".core",
    "MultimodalPipeline": ".base",
    "ImageCaptionPipeline": ".base",
    "ImagePipelineOutput": ".base",
    "TextPipelineOutput": ".base",
    "VideoPipelineOutput": ".base",
    "export_to_video": ".output",
    "MAX_CANDIDATES": ".rerank",
    "ScoreOutput": ".base",
    "TextGenerationPipeline": ".base",
    "TextToImagePipeline": ".base",
    "TextToVideoPipeline": ".base",
    "VideoCaptionPipeline": ".base",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'multimodal.pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .base import (BUILTIN_MODELS, ImageCaptionPipeline, ImagePipelineOutput, ModelNotFoundError, MultimodalPipeline,
                       ScoreOutput, TextGenerationPipeline, TextPipelineOutput, TextToImagePipeline, TextToVideoPipeline,
                       VideoCaptionPipeline, VideoPipelineOutput)
    from .output import export_to_video
    from .rerank import MAX_CANDIDATES
