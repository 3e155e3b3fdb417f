"""Image captioning: image -> autoencoder latents -> `<bos> <begin_image> [tokens] <end_image>` -> text head.

    pipe = ImageCaptionPipeline.from_pretrained("shapes")
    pipe("picture.png").text[0]          # paths, PIL images, uint8 arrays [H, W, 3] or tensors [3, H, W]
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..tokenizers.image import ImageTokenizer
from .core import PipelineCore
from .output import TextResult


def as_list(items: Any) -> list:
    """One image / video (path, PIL image, array, tensor) or a list of them -> a non-empty list."""
    single = isinstance(items, (str, os.PathLike, Image.Image, np.ndarray)) or \
        (isinstance(items, torch.Tensor) and items.ndim <= 3)
    items = [items] if single else list(items)
    if not items:
        raise ValueError("no inputs given")
    return items


class ImageCaption(PipelineCore):
    """Describe images with the unified model: the visual tokens are prefilled once, the caption decoded with the
    caches. The logic of `ImageCaptionPipeline`, which the `multimodal` command also runs without diffusers."""

    @torch.no_grad()
    def encode_images(self, images: Any, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Images -> normalised latents [B, C, 1, h, w] (resized to cover height x width and centre-cropped)."""
        if self.vae is None:
            raise ValueError("captioning needs the vae component")
        cfg = self.model.config
        frontend = ImageTokenizer(self.vae, (height or cfg.height, width or cfg.width), cfg.patch_size)
        pixels = frontend.preprocess(as_list(images))                                  # [B, 3, 1, H, W]
        return self.encode_pixels(pixels)

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        prompt: str | None = None,
        max_new_tokens: int = 32,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        no_immediate_repeat: bool | None = None,
        stop_strings: str | list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        return_dict: bool = True,
    ) -> TextResult | tuple:
        """Returns `TextPipelineOutput(text, tokens, finish_reason)` (or `(text,)`), one caption per image.

        `prompt` (optional) is text placed after the image, e.g. a question. `no_immediate_repeat` (a token never
        directly follows itself): None takes the model's `generation_config.json` (on for the built-in model)."""
        # 1. pixels -> latents (all images share one size, so the batch needs no padding)
        latents = self.encode_images(image, height, width)                              # [B, C, 1, h, w]
        # 2. sequences: <bos> <begin_image> visual tokens <end_image> [prompt]
        prompts = [self.tokenizer.encode(prompt)] * latents.shape[0] if prompt else None
        samples = self.model.caption_samples(list(latents), "image", prompts)
        # 3. prefill once, decode with the caches
        out = self.generate_text(samples, max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty,
                                 stop_strings, stop_token_ids, generator, min_new_tokens, no_immediate_repeat)
        return out if return_dict else (out.text,)
