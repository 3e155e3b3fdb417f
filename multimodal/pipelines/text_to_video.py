"""Text-to-video: prompt -> backbone (once) -> video flow head (per step) -> causal autoencoder decoder -> frames.

    pipe = TextToVideoPipeline.from_pretrained("shapes")
    frames = pipe("a small blue square moves left", num_frames=17).frames[0]
    export_to_video(frames, "out.mp4", fps=8)
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.callbacks import PipelineCallback

from .output import VideoPipelineOutput, postprocess_video
from .visual_generation import VisualGenerationPipeline


class TextToVideoPipeline(VisualGenerationPipeline):
    """Generate clips of 1 + 4k frames from text with the unified model's video head (diffusers conventions)."""

    kind = "video"
    model_cpu_offload_seq = "model->vae"

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
    ) -> VideoPipelineOutput | tuple:
        """Returns `VideoPipelineOutput(frames)` (or `(frames,)`), B = len(prompts) * num_videos_per_prompt clips of
        `num_frames` (1 + 4k, default the model's) frames; see `TextToImagePipeline.__call__` for the rest."""
        # 0. check inputs
        self.validate_output_type(output_type)
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
                                        list(callback_on_step_end_tensor_inputs))      # [B, C, T', h, w]
        # 5. decode
        if output_type == "latent":
            frames = latents
        else:
            frames = postprocess_video(self.decode_latents(latents)[:, :, :num_frames], output_type)
        self.maybe_free_model_hooks()
        return VideoPipelineOutput(frames=frames) if return_dict else (frames,)
