"""Scorer evaluators: what the quality table measures, on validation samples, during training.

Enabled by `TrainConfig.score_samples > 0` on runs that train the unified model; each scores the first
`score_samples` validation items of every generation and captioning task in the mix:

- `generation_accuracy` (`text_to_image`, `text_to_video`): the trainer's model, tokenizer and autoencoder are put in
  a `TextToImagePipeline` / `TextToVideoPipeline` with a flow-matching Euler scheduler; each validation caption is
  rendered with `score_steps` denoising steps, classifier-free guidance `score_guidance` and a generator seeded by
  its index, and the world's scorer (`multimodal.eval.scorer.score_frames`) checks every clause in the pixels.
  Logged: `accuracy/<task>` (fraction of samples whose every clause holds).
- `caption_scores` (`image_to_text`, `video_to_text`): greedy captions of the validation images / clips, compared with
  their references by `multimodal.eval.metrics.score_captions`. Logged: `exact/<task>`, `slot_f1/<task>`,
  `bleu4/<task>`, `cider_d/<task>`.

Both run in eval mode under `torch.no_grad()` with the training RNG forked (see `Trainer.evaluate`), so scoring
never changes the training run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .media_tasks import MEDIA_TASKS, encode_latents
from .validation import validation_items

if TYPE_CHECKING:
    from .trainer import Trainer

CAPTION_TOKENS = 32              # longest world caption is ~20 tokens


def _scored(trainer: "Trainer", mode: str) -> list[tuple[str, str]]:
    """(task name, kind) of the run's tasks in `mode` ("generate" / "caption") with validation items."""
    out = []
    for name in sorted(trainer.tasks):
        kind, task_mode = MEDIA_TASKS.get(name, (None, None))
        if task_mode == mode and trainer.val_data.get(kind) is not None:
            out.append((name, kind))
    return out


def generation_pipeline(trainer: "Trainer", kind: str):
    """A text-to-`kind` pipeline over the trainer's own model, tokenizer and autoencoder (no copies)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..pipelines.base import TextToImagePipeline, TextToVideoPipeline

    cls = TextToImagePipeline if kind == "image" else TextToVideoPipeline
    pipe = cls(model=trainer.model, tokenizer=trainer.tokenizer, vae=trainer.autoencoder,
               scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_accuracy(trainer: "Trainer") -> dict[str, float]:
    """Fraction of validation captions whose generated image / video passes the world's scorer."""
    from ..eval.quality import QualitySettings, generation_rows

    cfg = trainer.config
    settings = QualitySettings(steps=cfg.score_steps, guidance=cfg.score_guidance, seed=0, batch_size=1)
    results: dict[str, float] = {}
    for name, kind in _scored(trainer, "generate"):
        captions = validation_items(trainer.val_data[kind], False, cfg.score_samples, 0)
        rows, _ = generation_rows(generation_pipeline(trainer, kind), kind, captions, settings)
        results[f"accuracy/{name}"] = rows["overall"]["accuracy"]
    return results


def caption_scores(trainer: "Trainer") -> dict[str, float]:
    """Greedy captions of validation images / clips against their references: exact match, slot F1, BLEU-4, CIDEr-D."""
    from ..decoders.text import GenerationConfig
    from ..eval.metrics import score_captions

    cfg = trainer.config
    tok = trainer.tokenizer
    gen_cfg = GenerationConfig(max_new_tokens=CAPTION_TOKENS, do_sample=False, eos_token_id=tok.eos_id,
                               vocab_limit=tok.vocab_size)
    results: dict[str, float] = {}
    for name, kind in _scored(trainer, "caption"):
        items = validation_items(trainer.val_data[kind], True, cfg.score_samples, 0)
        frames = min(int(item["pixels"].shape[1]) for item in items)
        pixels = torch.stack([item["pixels"][:, :frames] for item in items]).to(trainer.device)
        latents = encode_latents(trainer.autoencoder, pixels).to(trainer.model.dtype)  # [B, C, T', h, w]
        samples = trainer.model.caption_samples(list(latents), kind)
        out = trainer.model.generate_text(samples, gen_cfg, None, tok.decode)
        scores = score_captions([t.strip() for t in out.text], [item["caption"] for item in items])
        results.update({f"exact/{name}": scores.exact, f"slot_f1/{name}": scores.slot_f1,
                        f"bleu4/{name}": scores.bleu4, f"cider_d/{name}": scores.cider_d})
    return results
