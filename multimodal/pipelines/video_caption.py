"""Video captioning: clip -> causal autoencoder latents -> `<bos> <begin_video> [tokens] <end_video>` -> text head.

    pipe = VideoCaptionPipeline.from_pretrained("shapes")
    pipe("clip.mp4").text[0]     # paths, uint8 arrays [F, H, W, 3], float tensors [F, 3, H, W], lists of frames

`num_frames` frames (default the model's, 17) are sampled uniformly from a file; a clip whose length is not 1 + 4k
is padded by repeating its last frame (the video tokenizer's rule).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..tokenizers.video import VideoTokenizer
from .core import PipelineCore
from .output import TextResult


def as_video_list(videos: Any) -> list:
    """One video (path, array [F, H, W, 3], tensor [F, 3, H, W]) or a list of them -> a non-empty list."""
    single = isinstance(videos, (str, os.PathLike, np.ndarray)) or (isinstance(videos, torch.Tensor) and videos.ndim == 4)
    videos = [videos] if single else list(videos)
    if not videos:
        raise ValueError("no videos given")
    return videos


class VideoCaption(PipelineCore):
    """Describe clips with the unified model: the video tokens are prefilled once, the caption decoded with the
    caches. The logic of `VideoCaptionPipeline`, which the `multimodal` command also runs without diffusers."""

    @torch.no_grad()
    def encode_videos(self, videos: Any, num_frames: int | None = None, height: int | None = None,
                      width: int | None = None) -> torch.Tensor:
        """Videos -> normalised latents [B, C, T', h, w]; every clip gets the same frame count and size."""
        if self.vae is None:
            raise ValueError("captioning needs the vae component")
        cfg = self.model.config
        frontend = VideoTokenizer(self.vae, (height or cfg.height, width or cfg.width), cfg.patch_size,
                                  num_frames=num_frames or cfg.num_frames)
        pixels, _ = frontend.preprocess(as_video_list(videos))                         # [B, 3, 1 + 4k, H, W]
        return self.encode_pixels(pixels)

    @torch.no_grad()
    def __call__(
        self,
        video: Any,
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
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        return_dict: bool = True,
    ) -> TextResult | tuple:
        """Returns `TextPipelineOutput(text, tokens, finish_reason)` (or `(text,)`), one caption per video.

        `prompt` (optional) is text placed after the video, e.g. a question. `no_immediate_repeat` (a token never
        directly follows itself): None takes the model's `generation_config.json` (on for the built-in model)."""
        # 1. frames -> latents (same frame count and size for every clip, so the batch needs no padding)
        latents = self.encode_videos(video, num_frames, height, width)                 # [B, C, T', h, w]
        # 2. sequences: <bos> <begin_video> visual tokens <end_video> [prompt]
        prompts = [self.tokenizer.encode(prompt)] * latents.shape[0] if prompt else None
        samples = self.model.caption_samples(list(latents), "video", prompts)
        # 3. prefill once, decode with the caches
        out = self.generate_text(samples, max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty,
                                 stop_strings, stop_token_ids, generator, min_new_tokens, no_immediate_repeat)
        return out if return_dict else (out.text,)
