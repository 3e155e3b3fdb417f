"""The generation loop shared by text-to-image and text-to-video.

1. tokenize the prompts (and the negative / empty prompts when guidance is on);
2. one backbone forward over `<bos> prompt <begin> <gen> x Nq` for all of them -> conditions [2B, Nq, dim];
3. draw the initial noise per sample with its generator (`draw_noise`, diffusers' `randn_tensor` contract); with
   `num_candidates` K > 1, K rounds of it, so each output gets K drafts (rerank.py);
4. for each scheduler timestep run only the small flow head on [uncond; cond], mix with the guidance scale
   v = v_u + g (v_c - v_u), and let the scheduler step (any diffusers flow scheduler: Euler, Heun, DPM-Solver with
   `prediction_type="flow_prediction"`, ...);
5. decode the latents with the autoencoder; with K drafts, score each by the model's reading of the prompt and
   keep the best (rerank.py); post-process to `output_type`.

The backbone runs once per sample, whatever the number of steps and drafts. Nothing here imports diffusers (core.py).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

import torch

from .core import PipelineCore
from .output import check_output_type
from .rerank import ScoreResult, quantize_pixels, rank_drafts

if TYPE_CHECKING:
    from diffusers.callbacks import PipelineCallback


def set_scheduler_timesteps(scheduler, num_inference_steps: int, device: torch.device, image_seq_len: int) -> torch.Tensor:
    """`scheduler.set_timesteps`, passing `mu` (Flux's resolution-dependent shift) when the scheduler uses dynamic
    shifting -> timesteps [num_inference_steps (x order)]."""
    kwargs: dict[str, Any] = {}
    if scheduler.config.get("use_dynamic_shifting", False):
        base_len, max_len = scheduler.config.get("base_image_seq_len", 256), scheduler.config.get("max_image_seq_len", 4096)
        base_shift, max_shift = scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.15)
        slope = (max_shift - base_shift) / (max_len - base_len)
        kwargs["mu"] = image_seq_len * slope + base_shift - slope * base_len
    if "device" in inspect.signature(scheduler.set_timesteps).parameters:
        kwargs["device"] = device
    scheduler.set_timesteps(num_inference_steps, **kwargs)
    return scheduler.timesteps


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise [shape] on `device`, as diffusers' `randn_tensor` draws it: with a list of generators,
    row i comes from generator i; a generator on another device (a CPU one) draws there and the noise moves after, so
    a CPU generator gives the same noise on every device."""
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    first = generator[0] if isinstance(generator, list) else generator
    where = first.device if first is not None else device
    if isinstance(generator, list):
        rows = [torch.randn((1, *shape[1:]), generator=g, device=where, dtype=dtype) for g in generator]
        return torch.cat(rows).to(device)                                             # [B, ...]
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)


def as_prompt_list(prompt: str | list[str], name: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name} must be a non-empty string or a list of strings")
    if any(not p.strip() for p in prompts):
        raise ValueError(f"{name} must not be empty")
    return prompts


class VisualGeneration(PipelineCore):
    """The logic of `TextToImagePipeline` and `TextToVideoPipeline` (text_to_image.py, text_to_video.py); `kind`
    is "image" or "video"."""

    kind = "image"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def encode_prompt(self, prompts: list[str], negative: list[str] | None, num_per_prompt: int,
                      do_cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompts -> (conditions [B*n, Nq, dim], negative conditions or None), in one backbone forward."""
        ids = [self.tokenizer.encode(p) for p in prompts for _ in range(num_per_prompt)]
        if do_cfg:
            neg = [self.tokenizer.encode(p) for p in (negative or [""] * len(prompts)) for _ in range(num_per_prompt)]
            states = self.model.encode_prompts(ids + neg, self.kind)                   # [2B, Nq, dim]
            return states[:len(ids)], states[len(ids):]
        return self.model.encode_prompts(ids, self.kind), None

    def prepare_latents(self, shape: tuple[int, ...], generator, latents: torch.Tensor | None) -> torch.Tensor:
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            return latents.to(self.device, self.dtype)
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for {shape[0]} samples (prompts x num_per_prompt)")
        return draw_noise(shape, generator, self.device, self.dtype)

    def prepare_drafts(self, shape_fn, outputs: int, num_candidates: int, generator,
                       latents: torch.Tensor | None) -> torch.Tensor:
        """Initial noise of `num_candidates` drafts per output -> [outputs * K, C, T', h, w], output-major.

        Round c draws every output's noise once more from the same generator(s), so draft c of an output is the
        same whatever K is, and K = 1 is the plain draw. Given `latents` must hold [outputs * K, ...] already."""
        if latents is not None or num_candidates == 1:
            return self.prepare_latents(shape_fn(outputs * num_candidates), generator, latents)
        rounds = [self.prepare_latents(shape_fn(outputs), generator, None) for _ in range(num_candidates)]
        return torch.stack(rounds, 1).flatten(0, 1)                                    # [outputs * K, ...]

    def generate_latents(self, prompt: str | list[str], negative_prompt: str | list[str] | None, shape_fn,
                         num_per_prompt: int, num_inference_steps: int, guidance_scale: float, generator,
                         latents: torch.Tensor | None, callback_on_step_end: Callable | PipelineCallback | None,
                         callback_on_step_end_tensor_inputs: list[str], num_candidates: int = 1) -> torch.Tensor:
        """Steps 1-4 of the module docstring -> normalised latents [B*n*K, C, T', h, w] (K drafts per output,
        output-major)."""
        if self.scheduler is None:
            raise ValueError("this pipeline has no scheduler; pass one (e.g. FlowMatchEulerDiscreteScheduler())")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if hasattr(callback_on_step_end, "tensor_inputs"):     # diffusers' PipelineCallback / MultiPipelineCallbacks
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs {bad} not in {self._callback_tensor_inputs}")
        prompts = as_prompt_list(prompt)
        negative = None
        if negative_prompt is not None:
            negative = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negative) != len(prompts):
                raise ValueError(f"got {len(negative)} negative prompts for {len(prompts)} prompts")
        self._guidance_scale, self._interrupt = guidance_scale, False
        head = self.model.head(self.kind)

        # 1-2. the backbone, once
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompts, negative, num_per_prompt,
                                                                   self.do_classifier_free_guidance)
        if num_candidates > 1:                                                         # drafts share the pass
            prompt_embeds = prompt_embeds.repeat_interleave(num_candidates, 0)
            if negative_prompt_embeds is not None:
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_candidates, 0)
        # 3. noise
        latents = self.prepare_drafts(shape_fn, len(prompts) * num_per_prompt, num_candidates, generator, latents)
        shape = tuple(latents.shape)
        n_tokens = shape[2] * shape[3] * shape[4] // head.config.patch_size ** 2
        timesteps = set_scheduler_timesteps(self.scheduler, num_inference_steps, self.device, n_tokens)
        self._num_timesteps = len(timesteps)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)

        # 4. only the head, per step
        with self.progress_bar(total=len(timesteps)) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                x = latents
                if hasattr(self.scheduler, "scale_model_input"):
                    x = self.scheduler.scale_model_input(x, t)
                tt = t.to(self.device, torch.float32).expand(x.shape[0])
                if self.do_classifier_free_guidance:
                    v_u, v_c = head(torch.cat([x, x]), torch.cat([tt, tt]),
                                    torch.cat([negative_prompt_embeds, prompt_embeds])).chunk(2)
                    v = v_u + self.guidance_scale * (v_c - v_u)
                else:
                    v = head(x, tt, prompt_embeds)
                latents = self.scheduler.step(v, t, latents, return_dict=False)[0].to(self.dtype)
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "negative_prompt_embeds": negative_prompt_embeds}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = out.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress.update()
        return latents

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, T', h, w] -> pixels [B, 3, 1 + 4(T' - 1), 8h, 8w] in [-1, 1]."""
        if self.vae is None:
            raise ValueError("this pipeline has no vae; use output_type='latent' or pass a CausalAutoencoder")
        z = self.vae.denormalize_latents(latents.to(self.vae.latent_mean.device, self.vae.latent_mean.dtype))
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(z.to(vae_dtype))

    # -------------------------------------------------------------------------------------------------- reranking
    def preprocess_media(self, media, height: int | None, width: int | None, num_frames: int | None) -> torch.Tensor:
        """Images or videos in any accepted form -> pixels [N, 3, T, H, W] in [-1, 1] (per pipeline kind)."""
        raise NotImplementedError

    @torch.no_grad()
    def score_pixels(self, pixels: torch.Tensor, prompts: list[str], batch_size: int = 32) -> ScoreResult:
        """pixels [N, 3, T, H, W] in [-1, 1] and one prompt each -> the model's log-likelihood of each prompt given
        its pixels (autoencoder encode, then one teacher-forced captioning forward per chunk of `batch_size`)."""
        if self.vae is None:
            raise ValueError("scoring needs the vae component (it encodes the pixels the captioning path reads)")
        ids = [self.tokenizer.encode(p) for p in prompts]
        sums, counts = [], []
        for lo in range(0, pixels.shape[0], batch_size):
            z = self.encode_pixels(pixels[lo:lo + batch_size])                         # [b, C, T', h, w]
            total, n = self.model.caption_log_likelihood(z, self.kind, ids[lo:lo + batch_size])
            sums.append(total.cpu())
            counts.append(n.cpu())
        total, n = torch.cat(sums), torch.cat(counts)
        return self.score_output(log_likelihood=total, mean_log_likelihood=total / n, num_tokens=n)

    def score(self, media, prompts: str | list[str], height: int | None = None, width: int | None = None,
              num_frames: int | None = None, batch_size: int = 32) -> ScoreResult:
        """How well the model reads each prompt back from each image / video -> `ScoreOutput` with one entry per
        pair: `log_likelihood` (sum over the prompt's tokens and `<eos>`), `mean_log_likelihood`, `num_tokens`.

        media: what the captioning pipeline of this kind takes (paths, PIL images, uint8 arrays, tensors; one or a
        list); prompts: one string for every item, or one per item. Higher is better; rank drafts of one prompt by
        either, different prompts by the mean."""
        if self.vae is None:
            raise ValueError("scoring needs the vae component (it encodes the pixels the captioning path reads)")
        pixels = self.preprocess_media(media, height, width, num_frames)               # [N, 3, T, H, W]
        n = pixels.shape[0]
        if isinstance(prompts, str):
            prompts = [prompts] * n
        prompts = as_prompt_list(prompts, "prompts")
        if len(prompts) != n:
            raise ValueError(f"got {n} {self.kind}s and {len(prompts)} prompts; pass one prompt per {self.kind} "
                             f"(or one string for all)")
        return self.score_pixels(pixels, prompts, batch_size)

    def choose_drafts(self, pixels: torch.Tensor, prompts: list[str], outputs_per_prompt: int, num_candidates: int,
                      return_all: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoded drafts [M*K, 3, T, H, W] (output-major) -> (rows to return [M] or [M*K] best first, scores [M, K]
        best first, draw index [M, K] of each score)."""
        k = num_candidates
        per_draft = [p for p in prompts for _ in range(outputs_per_prompt * k)]
        scores = self.score_pixels(quantize_pixels(pixels), per_draft).log_likelihood.view(-1, k)    # [M, K]
        order = rank_drafts(scores)                                                    # [M, K]
        rows = order + torch.arange(order.shape[0]).unsqueeze(1) * k                   # [M, K] rows of `pixels`
        keep = rows.flatten() if return_all else rows[:, 0]
        return keep, scores.gather(1, order), order

    @staticmethod
    def validate_output_type(output_type: str) -> None:
        check_output_type(output_type)
