"""The public pipelines: each task's logic (text_to_image.py, ...) on a diffusers `DiffusionPipeline`.

`MultimodalPipeline` is the `DiffusionPipeline` over the four components (core.py): diffusers' registration,
progress bar, offload hooks and `from_pipe`, plus our `from_pretrained` / `save_pretrained` / `from_scratch` and
results as diffusers `BaseOutput`s. The five task pipelines combine it with their logic:

    TextToImagePipeline = TextToImage + MultimodalPipeline        (same for video, captioning, text generation)

Any pipeline class loads any saved folder, and `OtherPipeline.from_pipe(pipe)` builds another task's pipeline over
the same objects (no copy). Every file is written atomically, and `model_index.json` last, so an interrupted save
never looks like a complete pipeline.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput

from ..io.atomic import atomic_path
from ..model import TokenIds, UnifiedModel, model_preset
from ..tokenizers.autoencoder import CausalAutoencoder
from ..tokenizers.config import AutoencoderConfig
from ..tokenizers.text import TextTokenizer
from .core import (BUILTIN_MODELS, DEFAULT_MODEL, ModelNotFoundError, PipelineCore, builtin_model_path,  # noqa: F401
                   cast_keeping_fp32, check_components, load_components, resolve_model_path)
from .image_caption import ImageCaption
from .output import ImageResult, TextResult, VideoResult
from .rerank import ScoreResult
from .text_generation import TextGeneration
from .text_to_image import TextToImage
from .text_to_video import TextToVideo
from .video_caption import VideoCaption


# ------------------------------------------------------------------------------------------------------- results
@dataclass
class ImagePipelineOutput(BaseOutput, ImageResult):
    """`ImageResult` (output.py) as a diffusers `BaseOutput`: `out.images`, `out["images"]`, `out[0]`."""


@dataclass
class VideoPipelineOutput(BaseOutput, VideoResult):
    """`VideoResult` (output.py) as a diffusers `BaseOutput`: `out.frames`, `out["frames"]`, `out[0]`."""


@dataclass
class TextPipelineOutput(BaseOutput, TextResult):
    """`TextResult` (output.py) as a diffusers `BaseOutput`: `out.text`, `out["text"]`, `out[0]`."""


@dataclass
class ScoreOutput(BaseOutput, ScoreResult):
    """`ScoreResult` (rerank.py) as a diffusers `BaseOutput`: `out.log_likelihood`, ..."""


def caption_corpus() -> list[str]:
    """Captions of the shapes-and-digits world (train split), for building a tokenizer from scratch."""
    from ..data.world import sample_image, sample_video, split_seed

    return [sample_image(split_seed("train", i)).caption for i in range(300)] + \
           [sample_video(split_seed("train", i)).caption for i in range(300)]


def _library_class(obj: Any) -> list[str]:
    """[module, class name] of a component, as model_index.json records it."""
    return [type(obj).__module__, type(obj).__name__]


class MultimodalPipeline(DiffusionPipeline, PipelineCore):
    """Base of the five task pipelines: components, from_pretrained / save_pretrained / to / from_scratch."""

    model_cpu_offload_seq = "model->vae"
    _optional_components = ["vae", "scheduler"]
    image_output, video_output = ImagePipelineOutput, VideoPipelineOutput
    text_output, score_output = TextPipelineOutput, ScoreOutput

    def __init__(self, model: UnifiedModel, tokenizer: TextTokenizer, vae: CausalAutoencoder | None = None,
                 scheduler: Any = None) -> None:
        DiffusionPipeline.__init__(self)
        check_components(model, tokenizer, vae)
        self.register_modules(model=model, vae=vae, tokenizer=tokenizer, scheduler=scheduler)

    # ours, not DiffusionPipeline's (which come first in the MRO): devices, loading
    device, dtype, to = PipelineCore.device, PipelineCore.dtype, PipelineCore.to

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, **_: Any) -> "MultimodalPipeline":
        """Load a folder written by `save_pretrained` (or a built-in model name). Only safetensors and JSON are read;
        `pipe.scheduler` is the diffusers scheduler the folder names (swappable through `from_config`)."""
        pipe = cls(**load_components(name_or_path, device, light_scheduler=False))
        return pipe.to(dtype=torch_dtype) if torch_dtype is not None else pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> Path:
        """Write model_index.json and one folder per component (config JSON + safetensors, tokenizer.json)."""
        path = Path(save_directory)
        (path / "model").mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path / "model")
        self.tokenizer.save(path / "tokenizer")
        index: dict[str, Any] = {"_class_name": type(self).__name__, "_diffusers_version": diffusers.__version__,
                                 "model": _library_class(self.model), "tokenizer": _library_class(self.tokenizer),
                                 "vae": [None, None], "scheduler": [None, None]}
        if self.vae is not None:
            (path / "vae").mkdir(exist_ok=True)
            self.vae.save_pretrained(path / "vae" / "autoencoder.safetensors")
            cfg_text = json.dumps(self.vae.config.to_dict(), indent=2) + "\n"
            with atomic_path(path / "vae" / "config.json") as tmp:
                Path(tmp).write_text(cfg_text)
            index["vae"] = _library_class(self.vae)
        if self.scheduler is not None:
            (path / "scheduler").mkdir(exist_ok=True)
            text = self.scheduler.to_json_string()
            with atomic_path(path / "scheduler" / "scheduler_config.json") as tmp:
                Path(tmp).write_text(text)
            index["scheduler"] = ["diffusers", type(self.scheduler).__name__]
        text = json.dumps(index, indent=2) + "\n"
        with atomic_path(path / "model_index.json") as tmp:
            Path(tmp).write_text(text)
        return path

    @classmethod
    def from_scratch(cls, preset: str = "debug", seed: int = 0, tokenizer: TextTokenizer | None = None,
                     vae: CausalAutoencoder | None = None) -> "MultimodalPipeline":
        """A randomly initialised (untrained) pipeline of a model preset: for tests, benchmarks and wiring a notebook
        before a trained model exists. The tokenizer is trained on the world's captions unless given; the autoencoder
        is the shipped trained one, except for `debug`, which gets a narrow random one."""
        random.seed(seed)
        torch.manual_seed(seed)
        tokenizer = tokenizer or TextTokenizer.train(caption_corpus(), vocab_size=400 if preset == "debug" else 1024,
                                                     min_frequency=1)
        config = model_preset(preset, TokenIds.from_tokenizer(tokenizer), vocab_size=tokenizer.vocab_size)
        if vae is None and preset == "debug":    # a narrow random autoencoder keeps the debug pipeline fast
            vae = CausalAutoencoder(AutoencoderConfig(channels=(8, 16, 16), norm_groups=4, decoder_blocks=(1, 1, 1)))
        elif vae is None:                        # the trained autoencoder shipped with the package
            vae = CausalAutoencoder.from_pretrained()
        model = UnifiedModel(config).eval()
        return cls(model=model, tokenizer=tokenizer, vae=vae.eval(), scheduler=FlowMatchEulerDiscreteScheduler())


# ------------------------------------------------------------------------------------------------ task pipelines
class TextToImagePipeline(TextToImage, MultimodalPipeline):
    """Generate images from text with the unified model's image head (diffusers conventions; text_to_image.py)."""


class TextToVideoPipeline(TextToVideo, MultimodalPipeline):
    """Generate clips of 1 + 4k frames from text with the unified model's video head (text_to_video.py)."""


class VideoCaptionPipeline(VideoCaption, MultimodalPipeline):
    """Describe clips with the unified model (video_caption.py)."""


class ImageCaptionPipeline(ImageCaption, MultimodalPipeline):
    """Describe images with the unified model (image_caption.py)."""


class TextGenerationPipeline(TextGeneration, MultimodalPipeline):
    """Continue prompts with the unified model's LM head (text_generation.py)."""
