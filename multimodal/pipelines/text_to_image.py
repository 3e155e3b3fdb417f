"""Text-to-image: prompt -> backbone (once) -> image flow head (per step) -> autoencoder decoder -> image.

    pipe = TextToImagePipeline.from_pretrained("shapes")
    image = pipe("a red circle above a blue square", generator=torch.Generator().manual_seed(0)).images[0]
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.callbacks import PipelineCallback

from .output import ImagePipelineOutput, postprocess_images
from .visual_generation import VisualGenerationPipeline


class TextToImagePipeline(VisualGenerationPipeline):
    """Generate images from text with the unified model's image head (diffusers conventions)."""

    kind = "image"
    model_cpu_offload_seq = "model->vae"

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 3.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Returns `ImagePipelineOutput(images)` (or `(images,)`): B = len(prompts) * num_images_per_prompt images.

        height / width default to the model's (multiples of 8 x the head's patch size); `generator` may be one
        generator or one per image; `guidance_scale` <= 1 turns classifier-free guidance off; `latents`
        [B, C, 1, h, w] replaces the initial noise."""
        # 0. check inputs
        self.validate_output_type(output_type)
        cfg = self.model.config
        height, width = height or cfg.height, width or cfg.width
        head = self.model.image_head
        head.latent_shape(1, height, width, cfg.spatial_compression)                   # raises on bad sizes
        # 1-4. prompts -> conditions -> denoised latents
        latents = self.generate_latents(
            prompt, negative_prompt, lambda b: head.latent_shape(b, height, width, cfg.spatial_compression),
            num_images_per_prompt, num_inference_steps, guidance_scale, generator, latents,
            callback_on_step_end, list(callback_on_step_end_tensor_inputs))           # [B, C, 1, h, w]
        # 5. decode
        if output_type == "latent":
            images = latents
        else:
            images = postprocess_images(self.decode_latents(latents)[:, :, 0], output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
