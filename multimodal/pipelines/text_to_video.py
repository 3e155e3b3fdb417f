"""Text-to-video: prompt -> backbone (once) -> video flow head (per step) -> causal autoencoder decoder -> frames.

    pipe = TextToVideoPipeline.from_pretrained("shapes")
    frames = pipe("a small blue square moves left", num_frames=17).frames[0]
    export_to_video(frames, "out.mp4", fps=8)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from ..tokenizers.video import VideoTokenizer
from .output import VideoResult, postprocess_video
from .rerank import check_num_candidates
from .video_caption import as_video_list
from .visual_generation import VisualGeneration, as_prompt_list

if TYPE_CHECKING:
    from diffusers.callbacks import PipelineCallback


class TextToVideo(VisualGeneration):
    """Generate clips of 1 + 4k frames from text with the unified model's video head: the logic of
    `TextToVideoPipeline` (diffusers conventions), which the `multimodal` command also runs without diffusers."""

    kind = "video"

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        num_candidates: int = 1,
        return_all_candidates: bool = False,
    ) -> VideoResult | tuple:
        """Returns `VideoPipelineOutput(frames)` (or `(frames,)`), B = len(prompts) * num_videos_per_prompt clips of
        `num_frames` (1 + 4k, default the model's) frames; see `TextToImagePipeline.__call__` for the rest, drafts
        (`num_candidates`, `return_all_candidates`) included."""
        # 0. check inputs
        self.validate_output_type(output_type)
        num_candidates = check_num_candidates(num_candidates)
        cfg = self.model.config
        height, width = height or cfg.height, width or cfg.width
        num_frames = num_frames or cfg.num_frames
        head = self.model.video_head

        def shape(b: int) -> tuple[int, ...]:
            return head.latent_shape(b, num_frames, height, width, cfg.temporal_compression, cfg.spatial_compression)

        shape(1)                                                                       # raises on bad sizes
        # 1-4. prompts -> conditions -> denoised latents
        latents = self.generate_latents(prompt, negative_prompt, shape, num_videos_per_prompt, num_inference_steps,
                                        guidance_scale, generator, latents, callback_on_step_end,
                                        list(callback_on_step_end_tensor_inputs), num_candidates)  # [B*K, C, T', h, w]
        # 5. decode (and with K drafts, keep the best)
        scores = index = pixels = None
        if num_candidates > 1:
            pixels = self.decode_latents(latents)[:, :, :num_frames]                   # [B*K, 3, F', H, W]
            keep, scores, index = self.choose_drafts(pixels, as_prompt_list(prompt), num_videos_per_prompt,
                                                     num_candidates, return_all_candidates)
            latents, pixels = latents[keep], pixels[keep]
        if output_type == "latent":
            frames = latents
        else:
            pixels = self.decode_latents(latents)[:, :, :num_frames] if pixels is None else pixels
            frames = postprocess_video(pixels, output_type)
        self.maybe_free_model_hooks()
        return self.video_output(frames=frames, scores=scores, candidate_index=index) if return_dict else (frames,)

    def preprocess_media(self, media, height: int | None, width: int | None, num_frames: int | None) -> torch.Tensor:
        """Videos (paths, uint8 arrays [F, H, W, 3], float tensors [F, 3, H, W], lists of frames; one or a list, of
        one length) -> pixels [N, 3, 1 + 4k, H, W] in [-1, 1]; a file gives `num_frames` (default the model's)
        frames sampled uniformly, and a clip whose length is not 1 + 4k repeats its last frame."""
        cfg = self.model.config
        tokenizer = VideoTokenizer(self.vae, (height or cfg.height, width or cfg.width), cfg.patch_size,
                                   num_frames=num_frames or cfg.num_frames)
        return tokenizer.preprocess(as_video_list(media))[0]
