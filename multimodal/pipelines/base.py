"""What every pipeline shares: its four components, loading and saving, device moves, built-in model names.

All five pipelines hold the same components (diffusers layout, reference/multimodal.md §4):

    model      `multimodal.model.UnifiedModel`          model/config.json + model/model.safetensors
    vae        `multimodal.tokenizers.autoencoder.CausalAutoencoder`   vae/config.json + vae/autoencoder.safetensors
    tokenizer  `multimodal.tokenizers.text.TextTokenizer`  tokenizer/tokenizer.json
    scheduler  a diffusers flow scheduler                 scheduler/scheduler_config.json

plus `model_index.json` naming each component's library and class. Any pipeline class loads any saved folder, and
`OtherPipeline.from_pipe(pipe)` builds another task's pipeline over the same objects (no copy). Every file is written
atomically, and `model_index.json` last, so an interrupted save never looks like a complete pipeline.
"""

from __future__ import annotations

import json
import os
import random
from importlib import resources
from pathlib import Path
from typing import Any

import diffusers
import torch
from torch import nn
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..decoders.text import GenerationConfig
from ..io.atomic import atomic_path
from ..model import Segment, TokenIds, UnifiedModel, model_preset
from ..tokenizers.autoencoder import CausalAutoencoder
from ..tokenizers.config import AutoencoderConfig
from ..tokenizers.text import TextTokenizer
from .output import TextPipelineOutput

BUILTIN_MODELS = {"shapes": "shapes-demo"}      # name -> folder under multimodal/assets/pipelines (training issue)
DEFAULT_MODEL = "shapes"
_KEEP_FP32 = ("inv_freq", "hc_attn.", "hc_ffn.", "hc_head.", "attn_sink", ".ape", "gate.bias", "latent_mean",
              "latent_std")


def cast_keeping_fp32(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast `module`'s floating parameters and buffers to `dtype` in place, except the `_KEEP_FP32` ones (mHC
    mixing, attention sinks, router biases, rotary tables, latent statistics), which stay as they are."""
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.is_floating_point() and not any(k in name for k in _KEEP_FP32):
            t.data = t.data.to(dtype)
    return module


class ModelNotFoundError(FileNotFoundError):
    """An unknown built-in model name, or a folder that is not a saved pipeline."""


def builtin_model_path(name: str) -> Path:
    """Folder of a built-in model; ModelNotFoundError (one line) when it is unknown or not shipped yet."""
    if name not in BUILTIN_MODELS:
        raise ModelNotFoundError(f"unknown model {name!r}: not a saved pipeline folder nor a built-in model "
                                 f"({', '.join(sorted(BUILTIN_MODELS))})")
    path = Path(str(resources.files("multimodal.assets"))) / "pipelines" / BUILTIN_MODELS[name]
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(f"the built-in model {name!r} is not available in this installation yet "
                                 f"(it ships with the trained model); pass --model PATH to a saved pipeline folder")
    return path


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A saved pipeline folder, or the folder of a built-in model name."""
    path = Path(name_or_path)
    if (path / "model_index.json").is_file():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} is not a saved pipeline folder (no model_index.json)")
    return builtin_model_path(str(name_or_path))


def caption_corpus() -> list[str]:
    """Captions of the shapes-and-digits world (train split), for building a tokenizer from scratch."""
    from ..data.world import sample_image, sample_video, split_seed

    return [sample_image(split_seed("train", i)).caption for i in range(300)] + \
           [sample_video(split_seed("train", i)).caption for i in range(300)]


def _library_class(obj: Any) -> list[str]:
    """[module, class name] of a component, as model_index.json records it."""
    return [type(obj).__module__, type(obj).__name__]


class MultimodalPipeline(DiffusionPipeline):
    """Base of the five task pipelines: components, from_pretrained / save_pretrained / to / from_scratch."""

    model_cpu_offload_seq = "model->vae"
    _optional_components = ["vae", "scheduler"]

    def __init__(self, model: UnifiedModel, tokenizer: TextTokenizer, vae: CausalAutoencoder | None = None,
                 scheduler: SchedulerMixin | None = None) -> None:
        super().__init__()
        if vae is not None and vae.config.latent_channels != model.config.latent_channels:
            raise ValueError(f"vae latent_channels ({vae.config.latent_channels}) != model latent_channels "
                             f"({model.config.latent_channels})")
        if tokenizer.vocab_size > model.config.backbone.vocab_size:
            raise ValueError(f"tokenizer vocabulary ({tokenizer.vocab_size}) exceeds the model's "
                             f"({model.config.backbone.vocab_size})")
        if TokenIds.from_tokenizer(tokenizer) != model.config.token_ids:
            raise ValueError("the tokenizer's special-token ids differ from the model's token_ids")
        self.register_modules(model=model, vae=vae, tokenizer=tokenizer, scheduler=scheduler)

    # --------------------------------------------------------------------------------------------------- devices
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "MultimodalPipeline":
        """Move the model and vae in place (and return self). Norms, mHC mixing, attention sinks, router biases,
        rotary tables and latent statistics stay fp32 under a low-precision dtype, as DeepSeek keeps them."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        for module in (self.model, self.vae):
            if module is None:
                continue
            if device is not None:
                module.to(device)
            if dtype is not None:
                cast_keeping_fp32(module, dtype)
        return self

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [B, 3, T, H, W] -> normalised latents, on the autoencoder's device and dtype."""
        vae_param = next(self.vae.parameters())
        return self.vae.normalize_latents(self.vae.encode(pixels.to(vae_param.device, vae_param.dtype)))

    # ------------------------------------------------------------------------------------------------ text output
    def generate_text(self, samples: list[list[Segment]], max_new_tokens: int, do_sample: bool, temperature: float,
                      top_k: int, top_p: float, repetition_penalty: float, stop_strings: str | list[str] | None,
                      stop_token_ids: list[int] | None, generator, min_new_tokens: int = 0) -> TextPipelineOutput:
        """Decode text after each sample with the text head (one prefill, then the caches) -> `TextPipelineOutput`."""
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,
                               temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                               stop_strings=tuple([stop_strings] if isinstance(stop_strings, str) else stop_strings or ()),
                               stop_token_ids=tuple(stop_token_ids or ()), eos_token_id=self.tokenizer.eos_id,
                               vocab_limit=self.tokenizer.vocab_size)
        if isinstance(generator, list) and len(generator) != len(samples):
            raise ValueError(f"got {len(generator)} generators for {len(samples)} inputs")
        result = self.model.generate_text(samples, cfg, generator, self.tokenizer.decode)
        return TextPipelineOutput(text=[t.strip() for t in result.text], tokens=result.tokens,
                                  finish_reason=result.finish_reason)

    # ----------------------------------------------------------------------------------------------- persistence
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, **_: Any) -> "MultimodalPipeline":
        """Load a folder written by `save_pretrained` (or a built-in model name). Only safetensors and JSON are read."""
        path = resolve_model_path(name_or_path)
        index = json.loads((path / "model_index.json").read_text())
        model = UnifiedModel.from_pretrained(path / "model", device=device)
        tokenizer = TextTokenizer.from_file(path / "tokenizer" / "tokenizer.json")
        vae = None
        if index.get("vae", [None])[0] is not None:
            vae = CausalAutoencoder.from_pretrained(path / "vae" / "autoencoder.safetensors", device=device)
        scheduler = None
        library, name = index.get("scheduler", [None, None])
        if library is not None:
            cls_ = getattr(diffusers, name, None)
            if library != "diffusers" or not (isinstance(cls_, type) and issubclass(cls_, SchedulerMixin)):
                raise ModelNotFoundError(f"{path}: scheduler {library}.{name} is not a diffusers scheduler")
            scheduler = cls_.from_pretrained(path / "scheduler")
        pipe = cls(model=model, tokenizer=tokenizer, vae=vae, scheduler=scheduler)
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
