"""Text generation: `<bos> prompt` -> backbone prefill -> text head, one token per step with the caches.

    pipe = TextGenerationPipeline.from_pretrained("shapes")
    pipe("a red circle", max_new_tokens=16).text[0]
"""

from __future__ import annotations

import torch

from ..model import Segment
from .core import PipelineCore
from .output import TextResult
from .visual_generation import as_prompt_list


class TextGeneration(PipelineCore):
    """Continue prompts with the unified model's LM head; a list of prompts is one left-padded batch. The logic of
    `TextGenerationPipeline`, which the `multimodal` command also runs without diffusers."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
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
        return_dict: bool = True,
    ) -> TextResult | tuple:
        """Returns `TextPipelineOutput(text, tokens, finish_reason)` (or `(text,)`), one continuation per prompt.

        `no_immediate_repeat` (a token never directly follows itself): None takes the model's `generation_config.json`."""
        # 1. tokenize
        prompts = as_prompt_list(prompt)
        bos = self.tokenizer.bos_id
        samples = [[Segment.text([bos, *self.tokenizer.encode(p)])] for p in prompts]
        # 2. prefill once, decode with the caches
        out = self.generate_text(samples, max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty,
                                 stop_strings, stop_token_ids, generator, min_new_tokens, no_immediate_repeat)
        return out if return_dict else (out.text,)
