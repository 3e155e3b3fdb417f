"""The tasks that see pixels: text -> image, text -> video (generation) and image -> text, video -> text (captions).

All four train the unified model (`multimodal.model.UnifiedModel`) on normalised latents of the frozen causal
autoencoder (`multimodal.tokenizers.autoencoder.CausalAutoencoder`): pixels in [0, 1] are mapped to [-1, 1],
encoded to the posterior mean and standardised with the autoencoder's latent statistics. The autoencoder is
trained separately (`multimodal train autoencoder`) and never updated here.

| task            | data          | loss                                                                           |
|-----------------|---------------|--------------------------------------------------------------------------------|
| `text_to_image` | image + caption | `UnifiedModel.generation_loss`: rectified-flow velocity MSE of the image head, conditioned on the backbone's states at the query tokens after `<bos> caption`; the caption is dropped with probability `condition_dropout` (for classifier-free guidance) |
| `text_to_video` | video + caption | the same with the video head and 17-frame clips                               |
| `image_to_text` | image + caption | `UnifiedModel.caption_loss`: next-token cross-entropy of `caption <eos>` after `<bos> <begin_image> visual <end_image>` |
| `video_to_text` | video + caption | the same after the video's tokens                                             |

With `TrainConfig.latent_cache`, the image and video items come from `latent_cache.LatentDataset` and already hold
their latents, so training never runs the encoder. The randomness of the generation loss (condition dropout, noise, noise levels) comes from torch's global
generator, which checkpoints store and restore, so resume stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

MEDIA_TASKS = {
    "text_to_image": ("image", "generate"),
    "text_to_video": ("video", "generate"),
    "image_to_text": ("image", "caption"),
    "video_to_text": ("video", "caption"),
}


@torch.no_grad()
def encode_latents(autoencoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels [B, 3, T, H, W] in [0, 1] -> normalised latents [B, C, 1 + (T - 1) / 4, H / 8, W / 8] (fp32)."""
    raw = autoencoder.encode(pixels.float() * 2.0 - 1.0)
    return autoencoder.normalize_latents(raw).float()


@dataclass
class MediaTask:
    """One of `MEDIA_TASKS`: `kind` ("image" / "video") and `mode` ("generate" / "caption")."""

    tokenizer: Any
    autoencoder: nn.Module
    name: str
    seq_len: int = 64
    flow_repeats: int = 1                # generation: head evaluations (noise draws) per backbone pass
    flow_weighting: str = "none"         # generation: the training loss's weights per noise level ("none" /
    #                                      "min-snr", decoders.flow.loss_weights); evaluation always reports the plain loss
    needs_pixels: bool = True

    def __post_init__(self) -> None:
        if self.name not in MEDIA_TASKS:
            raise ValueError(f"unknown media task {self.name!r}; choose one of {sorted(MEDIA_TASKS)}")
        self.kind, self.mode = MEDIA_TASKS[self.name]

    @property
    def data_kind(self) -> str:
        """Which items the task's stream serves: "image" or "video"."""
        return self.kind

    def collate(self, items: Sequence[dict], device: torch.device) -> dict[str, Any]:
        """Stack pixels (clips cut to the shortest 1 + 4k length in the batch), or the latents of items from a
        `latent_cache.LatentDataset` (cut to the shortest 1 + k latent frames, the same thing for a causal
        autoencoder), and tokenise captions (no specials; at most `seq_len` tokens)."""
        ids = [self.tokenizer.encode(item["caption"])[: self.seq_len] for item in items]
        key = "latents" if "latents" in items[0] else "pixels"
        frames = min(int(item[key].shape[1]) for item in items)
        stacked = torch.stack([item[key][:, :frames] for item in items]).to(device)        # [B, C, T, H, W]
        return {key: stacked, "caption_ids": ids}

    def weight(self, batch: dict[str, Any]) -> float:
        """Samples in the batch."""
        captions = batch["captions"] if "captions" in batch else batch["caption_ids"]
        return float(captions.lengths.shape[0] if hasattr(captions, "lengths") else len(captions))

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The task's loss on a collated batch (caption id lists) or a resident one (`resident_data.ResidentMedia`:
        a `PackedText` under "captions", latents already on the device)."""
        if "latents" in batch:
            latents = batch["latents"].float()                                          # [B, C, T', h, w]
        else:
            with torch.autocast(batch["pixels"].device.type, enabled=False):           # the frozen encoder in fp32
                latents = encode_latents(self.autoencoder, batch["pixels"])
        ids = batch["captions"] if "captions" in batch else batch["caption_ids"]
        if self.mode == "generate":
            weighting = self.flow_weighting if model.training else "none"     # validation: comparable across runs
            loss = model.generation_loss(ids, latents.to(model.dtype), self.kind, repeats=self.flow_repeats,
                                         weighting=weighting)
            tokens: Any = 0.0
        else:
            loss = model.caption_loss(latents.to(model.dtype), self.kind, ids)
            tokens = ids.lengths.sum() + ids.lengths.shape[0] if hasattr(ids, "lengths") else \
                float(sum(len(c) + 1 for c in ids))                                     # a tensor is read once per update
        return loss, {"tokens": tokens}
