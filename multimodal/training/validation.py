"""The trainer's built-in evaluator: the loss of every task on held-out data, and the hook for other scores.

`validation_loss(trainer)` runs `eval_batches` micro-batches per task over its validation dataset (the world's
validation split, or every 20th user pair; tasks without validation items are skipped), always the same items in the same order, and returns
`{"loss/<task>": mean loss, "<stat>/<task>": mean of each other statistic the task reports}`.

Other evaluators follow the same contract — a callable `(trainer) -> {name: float}` passed to
`Trainer(evaluators=[...])` — and run in eval mode under `torch.no_grad()` with the training RNG forked, so they
can sample freely (e.g. caption the validation images and score them with `multimodal.eval`) without changing
the training run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tasks import SampleStream, caption_of

if TYPE_CHECKING:
    from .trainer import Trainer


def validation_items(data, needs_pixels: bool, n: int, offset: int) -> list[Any]:
    """Items `offset .. offset + n` of a validation dataset (wrapping around), captions only unless pixels."""
    indices = SampleStream(len(data), seed=0, shuffle=False)
    indices.load_state_dict({"epoch": 0, "offset": offset % len(data), "length": len(data)})
    picked = indices.take(n)
    return [data[i] for i in picked] if needs_pixels else [caption_of(data, i) for i in picked]


def validation_loss(trainer: "Trainer") -> dict[str, float]:
    """Mean loss (and statistics) of each task over `eval_batches` fixed validation micro-batches."""
    cfg = trainer.config
    out: dict[str, float] = {}
    for name, task in sorted(trainer.tasks.items()):
        data = trainer.val_data.get(task.data_kind)
        if data is None or len(data) == 0:
            continue
        sums: dict[str, float] = {}
        for b in range(cfg.eval_batches):
            items = validation_items(data, task.needs_pixels, cfg.micro_batch_size, b * cfg.micro_batch_size)
            loss, stats = task.loss(trainer.model, task.collate(items, trainer.device))
            sums["loss"] = sums.get("loss", 0.0) + float(loss)
            for key, value in stats.items():
                if key != "tokens":
                    sums[key] = sums.get(key, 0.0) + float(value)
        out.update({f"{key}/{name}": value / cfg.eval_batches for key, value in sums.items()})
    return out
