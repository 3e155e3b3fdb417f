"""What every pipeline does without diffusers: hold the four components, load them from a folder, move them, encode
pixels, decode text, show progress.

All five pipelines hold the same components (diffusers layout, reference/multimodal.md §4):

    model      `multimodal.model.UnifiedModel`          model/config.json + model/model.safetensors
    vae        `multimodal.tokenizers.autoencoder.CausalAutoencoder`   vae/config.json + vae/autoencoder.safetensors
    tokenizer  `multimodal.tokenizers.text.TextTokenizer`  tokenizer/tokenizer.json
    scheduler  a flow scheduler (scheduler.py)           scheduler/scheduler_config.json

plus `model_index.json` naming each component's library and class.

Each task's logic (text_to_image.py, video_caption.py, ...) is written once, on `PipelineCore`. The public
pipelines (base.py) are that logic on a diffusers `DiffusionPipeline`; the `multimodal` command runs it on a bare
`PipelineCore` subclass, which imports neither diffusers nor anything it pulls in (torch._dynamo, transformers,
scipy): on a CPU that import takes longer than sampling an image. The same code runs either way.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..decoders.text import GenerationConfig
from ..model import Segment, TokenIds, UnifiedModel
from ..tokenizers.autoencoder import CausalAutoencoder
from ..tokenizers.text import TextTokenizer
from .output import ImageResult, TextResult, VideoResult
from .rerank import ScoreResult
from .scheduler import load_scheduler

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


def load_components(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
                    light_scheduler: bool = False) -> dict[str, Any]:
    """model, tokenizer, vae (or None) and scheduler (or None) of a saved folder or built-in name, on `device`.
    Only safetensors and JSON are read; `light_scheduler` as in `scheduler.load_scheduler`."""
    path = resolve_model_path(name_or_path)
    index = json.loads((path / "model_index.json").read_text())
    model = UnifiedModel.from_pretrained(path / "model", device=device)
    tokenizer = TextTokenizer.from_file(path / "tokenizer" / "tokenizer.json")
    vae = None
    if index.get("vae", [None])[0] is not None:
        vae = CausalAutoencoder.from_pretrained(path / "vae" / "autoencoder.safetensors", device=device)
    library, name = index.get("scheduler", [None, None])
    scheduler = load_scheduler(path / "scheduler", library, name, light=light_scheduler)
    return {"model": model, "tokenizer": tokenizer, "vae": vae, "scheduler": scheduler}


def check_components(model: UnifiedModel, tokenizer: TextTokenizer, vae: CausalAutoencoder | None) -> None:
    """ValueError naming the mismatch when the components do not fit together."""
    if vae is not None and vae.config.latent_channels != model.config.latent_channels:
        raise ValueError(f"vae latent_channels ({vae.config.latent_channels}) != model latent_channels "
                         f"({model.config.latent_channels})")
    if tokenizer.vocab_size > model.config.backbone.vocab_size:
        raise ValueError(f"tokenizer vocabulary ({tokenizer.vocab_size}) exceeds the model's "
                         f"({model.config.backbone.vocab_size})")
    if TokenIds.from_tokenizer(tokenizer) != model.config.token_ids:
        raise ValueError("the tokenizer's special-token ids differ from the model's token_ids")


class PipelineCore:
    """The four components and what every task does with them; the base of each task's logic.

    The result classes (`image_output`, ...) are plain dataclasses here and diffusers `BaseOutput`s on the public
    pipelines; the progress bar is tqdm's, configured as diffusers' (`set_progress_bar_config(disable=True)`)."""

    image_output: type = ImageResult
    video_output: type = VideoResult
    text_output: type = TextResult
    score_output: type = ScoreResult

    def __init__(self, model: UnifiedModel, tokenizer: TextTokenizer, vae: CausalAutoencoder | None = None,
                 scheduler: Any = None) -> None:
        check_components(model, tokenizer, vae)
        self.model, self.tokenizer, self.vae, self.scheduler = model, tokenizer, vae, scheduler

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device = "cpu",
                        torch_dtype: torch.dtype | None = None, **_: Any) -> "PipelineCore":
        """Load a folder written by `save_pretrained` (or a built-in model name). Only safetensors and JSON are read;
        the scheduler is an `EulerFlowScheduler` where it samples as the saved one (scheduler.py)."""
        pipe = cls(**load_components(name_or_path, device, light_scheduler=True))
        return pipe.to(dtype=torch_dtype) if torch_dtype is not None else pipe

    # --------------------------------------------------------------------------------------------------- devices
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "PipelineCore":
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

    # ------------------------------------------------------------------------------------- progress and hooks
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._progress_bar_config = kwargs

    def progress_bar(self, iterable=None, total: int | None = None):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, **getattr(self, "_progress_bar_config", {}))

    def maybe_free_model_hooks(self) -> None:
        """No offload hooks exist outside diffusers (the public pipelines free theirs here)."""

    # -------------------------------------------------------------------------------------------------- shared
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels [B, 3, T, H, W] -> normalised latents, on the autoencoder's device and dtype."""
        vae_param = next(self.vae.parameters())
        return self.vae.normalize_latents(self.vae.encode(pixels.to(vae_param.device, vae_param.dtype)))

    def generate_text(self, samples: list[list[Segment]], max_new_tokens: int, do_sample: bool, temperature: float,
                      top_k: int, top_p: float, repetition_penalty: float, stop_strings: str | list[str] | None,
                      stop_token_ids: list[int] | None, generator, min_new_tokens: int = 0,
                      no_immediate_repeat: bool | None = None):
        """Decode text after each sample with the text head (one prefill, then the caches) -> `text_output`.

        `no_immediate_repeat=None` takes the model's default (its folder's `generation_config.json`; off without one)."""
        if no_immediate_repeat is None:
            no_immediate_repeat = self.model.generation_config.no_immediate_repeat
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,
                               temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                               no_immediate_repeat=no_immediate_repeat,
                               stop_strings=tuple([stop_strings] if isinstance(stop_strings, str) else stop_strings or ()),
                               stop_token_ids=tuple(stop_token_ids or ()), eos_token_id=self.tokenizer.eos_id,
                               vocab_limit=self.tokenizer.vocab_size)
        if isinstance(generator, list) and len(generator) != len(samples):
            raise ValueError(f"got {len(generator)} generators for {len(samples)} inputs")
        result = self.model.generate_text(samples, cfg, generator, self.tokenizer.decode)
        return self.text_output(text=[t.strip() for t in result.text], tokens=result.tokens,
                                finish_reason=result.finish_reason)
