"""Scorer evaluators: what the quality table measures, on validation samples, during training.

Enabled by `TrainConfig.score_samples` on runs that train the unified model; each scores the first
`score_samples_of(kind)` validation items (the same items at every evaluation; all of them when the validation data
holds fewer) of every generation and captioning task in the mix, and logs how many as `scored/<task>`:

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
CAPTION_BATCH = 16               # validation images / clips encoded and captioned at once


def _scored(trainer: "Trainer", mode: str) -> list[tuple[str, str, int]]:
    """(task name, kind, items to score) of the run's tasks in `mode` ("generate" / "caption") with validation items
    and a score count > 0."""
    out = []
    for name in sorted(trainer.tasks):
        kind, task_mode = MEDIA_TASKS.get(name, (None, None))
        data = trainer.val_data.get(kind) if task_mode == mode else None
        n = min(trainer.config.score_samples_of(kind), len(data)) if data is not None else 0
        if n > 0:
            out.append((name, kind, n))
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
    for name, kind, n in _scored(trainer, "generate"):
        captions = validation_items(trainer.val_data[kind], False, n, 0)
        rows, _ = generation_rows(generation_pipeline(trainer, kind), kind, captions, settings)
        results.update({f"accuracy/{name}": rows["overall"]["accuracy"], f"scored/{name}": float(len(captions))})
    return results


def caption_scores(trainer: "Trainer") -> dict[str, float]:
    """Greedy captions of validation images / clips against their references: exact match, slot F1, BLEU-4, CIDEr-D."""
    from ..decoders.text import GenerationConfig
    from ..eval.metrics import score_captions

    tok = trainer.tokenizer
    gen_cfg = GenerationConfig(max_new_tokens=CAPTION_TOKENS, do_sample=False, eos_token_id=tok.eos_id,
                               vocab_limit=tok.vocab_size,            # the model's own default, as its pipelines decode
                               no_immediate_repeat=trainer.model.generation_config.no_immediate_repeat)
    results: dict[str, float] = {}
    for name, kind, n in _scored(trainer, "caption"):
        items = validation_items(trainer.val_data[kind], True, n, 0)
        frames = min(int(item["pixels"].shape[1]) for item in items)
        texts: list[str] = []
        for start in range(0, len(items), CAPTION_BATCH):            # bounded memory for 100 images / 50 clips
            chunk = items[start:start + CAPTION_BATCH]
            pixels = torch.stack([item["pixels"][:, :frames] for item in chunk]).to(trainer.device)
            latents = encode_latents(trainer.autoencoder, pixels).to(trainer.model.dtype)  # [B, C, T', h, w]
            samples = trainer.model.caption_samples(list(latents), kind)
            texts += [t.strip() for t in trainer.model.generate_text(samples, gen_cfg, None, tok.decode).text]
        scores = score_captions(texts, [item["caption"] for item in items])
        results.update({f"exact/{name}": scores.exact, f"slot_f1/{name}": scores.slot_f1,
                        f"bleu4/{name}": scores.bleu4, f"cider_d/{name}": scores.cider_d,
                        f"scored/{name}": float(len(items))})
    return results
