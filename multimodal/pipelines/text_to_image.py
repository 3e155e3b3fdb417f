"""Text-to-image: prompt -> backbone (once) -> image flow head (per step) -> autoencoder decoder -> image.

    pipe = TextToImagePipeline.from_pretrained("shapes")
    image = pipe("a red circle above a blue square", generator=torch.Generator().manual_seed(0)).images[0]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from ..tokenizers.image import ImageTokenizer
from .image_caption import as_list
from .output import ImageResult, postprocess_images
from .rerank import check_num_candidates
from .visual_generation import VisualGeneration, as_prompt_list

if TYPE_CHECKING:
    from diffusers.callbacks import PipelineCallback


class TextToImage(VisualGeneration):
    """Generate images from text with the unified model's image head: the logic of `TextToImagePipeline`
    (diffusers conventions), which the `multimodal` command also runs without diffusers (core.py)."""

    kind = "image"

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
        num_candidates: int = 1,
        return_all_candidates: bool = False,
    ) -> ImageResult | tuple:
        """Returns `ImagePipelineOutput(images)` (or `(images,)`): B = len(prompts) * num_images_per_prompt images.

        height / width default to the model's (multiples of 8 x the head's patch size); `generator` may be one
        generator or one per image; `guidance_scale` <= 1 turns classifier-free guidance off; `latents`
        [B, C, 1, h, w] replaces the initial noise ([B * K, ...] with K drafts).

        `num_candidates` K > 1 draws K drafts per image in one batch and returns the one the model reads the prompt
        back from best, with every draft's score (`scores`, `candidate_index`; rerank.py); `return_all_candidates`
        returns all B * K drafts, best first per image. K = 1 is the plain pipeline (nothing scored)."""
        # 0. check inputs
        self.validate_output_type(output_type)
        num_candidates = check_num_candidates(num_candidates)
        cfg = self.model.config
        height, width = height or cfg.height, width or cfg.width
        head = self.model.image_head
        head.latent_shape(1, height, width, cfg.spatial_compression)                   # raises on bad sizes
        # 1-4. prompts -> conditions -> denoised latents
        latents = self.generate_latents(
            prompt, negative_prompt, lambda b: head.latent_shape(b, height, width, cfg.spatial_compression),
            num_images_per_prompt, num_inference_steps, guidance_scale, generator, latents,
            callback_on_step_end, list(callback_on_step_end_tensor_inputs), num_candidates)  # [B*K, C, 1, h, w]
        # 5. decode (and with K drafts, keep the best)
        scores = index = pixels = None
        if num_candidates > 1:
            pixels = self.decode_latents(latents)                                      # [B*K, 3, 1, H, W]
            keep, scores, index = self.choose_drafts(pixels, as_prompt_list(prompt), num_images_per_prompt,
                                                     num_candidates, return_all_candidates)
            latents, pixels = latents[keep], pixels[keep]
        if output_type == "latent":
            images = latents
        else:
            pixels = self.decode_latents(latents) if pixels is None else pixels
            images = postprocess_images(pixels[:, :, 0], output_type)
        self.maybe_free_model_hooks()
        return self.image_output(images=images, scores=scores, candidate_index=index) if return_dict else (images,)

    def preprocess_media(self, media, height: int | None, width: int | None, num_frames: int | None) -> torch.Tensor:
        """Images (paths, PIL images, uint8 arrays [H, W, 3], tensors [3, H, W]; one or a list) -> pixels
        [N, 3, 1, H, W] in [-1, 1], resized to cover height x width (default the model's) and centre-cropped."""
        cfg = self.model.config
        return ImageTokenizer(self.vae, (height or cfg.height, width or cfg.width), cfg.patch_size).preprocess(
            as_list(media))
