"""A training curriculum: stages that narrow which world items the media tasks see, and optionally the task mix.

`TrainConfig.curriculum` is a list of stages, run in order; each is a dict of

| key       | meaning                                                                                          |
|-----------|--------------------------------------------------------------------------------------------------|
| `updates` | the stage's length in optimizer updates; the last stage may leave it out (it runs to the end)      |
| `image`   | the image items it trains on, by kind: any of `single`, `count`, `relation` (default: all)        |
| `video`   | the clips it trains on: `still` (every object stays still) and/or `moving` (default: both)        |
| `tasks`   | task weights while it runs (default: the run's `tasks`); only tasks the run trains               |
| `narrow`  | the media tasks `image` / `video` apply to (default: all); the others draw from every item        |

For example single objects, then counts, then relations, with still clips first:

    [{"updates": 100, "image": ["single"], "video": ["still"]},
     {"updates": 100, "image": ["single", "count"]},
     {}]

Relation images for the image captions alone, every kind for the pictures:

    [{"updates": 250, "image": ["relation"], "narrow": ["image_to_text"]}, {}]

An item's kind is read from its caption with the world's grammar (`multimodal.eval.captions.parse_caption`), so a
curriculum needs captions in that grammar. The text task is never narrowed. Each stage draws its items from a fresh
seeded permutation of the items it allows (`SampleStream` over that subset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

IMAGE_STAGES = ("single", "count", "relation")
VIDEO_STAGES = ("still", "moving")
STAGE_KEYS = ("updates", "image", "video", "tasks", "narrow")
ITEM_STAGES = {"image": IMAGE_STAGES, "video": VIDEO_STAGES}


@dataclass(frozen=True)
class CurriculumStage:
    """One stage: `updates` (None = to the end of the run), the item kinds it allows per media kind, its mix, and the
    media tasks it narrows (None = every one)."""

    updates: int | None
    image: tuple[str, ...] = IMAGE_STAGES
    video: tuple[str, ...] = VIDEO_STAGES
    tasks: dict[str, float] | None = field(default=None, hash=False)
    narrow: tuple[str, ...] | None = None

    def allows(self, kind: str, task: str | None = None) -> tuple[str, ...]:
        """The item kinds this stage trains on for media kind `kind` ("image" / "video"), for task `task` when given
        (a task the stage does not narrow trains on every kind)."""
        if task is not None and self.narrow is not None and task not in self.narrow:
            return ITEM_STAGES[kind]
        return self.image if kind == "image" else self.video

    def describe(self, media: tuple[str, ...] = ("image", "video")) -> str:
        """The stage in words, e.g. "image single, count; video still", for the media kinds the run trains."""
        parts = [f"{m} {', '.join(self.allows(m))}" for m in ("image", "video") if m in media]
        if self.narrow is not None:
            parts.append("for " + ", ".join(self.narrow))
        if self.tasks is not None:
            parts.append("tasks " + ", ".join(f"{n} {w:g}" for n, w in self.tasks.items()))
        return "; ".join(parts)


def parse_curriculum(stages: Any, task_names: tuple[str, ...] | list[str]) -> list[CurriculumStage]:
    """Validate `TrainConfig.curriculum` (a list of stage dicts) against the run's tasks; errors name the stage (1-based)
    and the offending key or value."""
    if not isinstance(stages, (list, tuple)):
        raise ValueError(f"curriculum must be a list of stages (dicts), got {type(stages).__name__}")
    parsed: list[CurriculumStage] = []
    for i, stage in enumerate(stages, 1):
        where = f"curriculum stage {i}"
        if not isinstance(stage, dict):
            raise ValueError(f"{where} must be a dict with keys {list(STAGE_KEYS)}, got {stage!r}")
        unknown = sorted(set(stage) - set(STAGE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; choose from {list(STAGE_KEYS)}")
        updates = stage.get("updates")
        if updates is None and i < len(stages):
            raise ValueError(f"{where}: 'updates' is required on every stage but the last")
        if updates is not None and not (isinstance(updates, int) and not isinstance(updates, bool) and updates > 0):
            raise ValueError(f"{where}: 'updates' must be an integer > 0, got {updates!r}")
        kinds = {}
        for media, names in ITEM_STAGES.items():
            chosen = stage.get(media, list(names))
            if isinstance(chosen, str) or not isinstance(chosen, (list, tuple)) or not chosen:
                raise ValueError(f"{where}: {media!r} must be a non-empty list of {list(names)}, got {chosen!r}")
            bad = [c for c in chosen if c not in names]
            if bad:
                raise ValueError(f"{where}: unknown {media} stage(s) {bad}; choose from {list(names)}")
            kinds[media] = tuple(n for n in names if n in chosen)            # canonical order, no repeats
        tasks = stage.get("tasks")
        if tasks is not None:
            if not isinstance(tasks, dict) or not tasks:
                raise ValueError(f"{where}: 'tasks' must be a non-empty dict of task weights, got {tasks!r}")
            unknown = sorted(set(tasks) - set(task_names))
            if unknown:
                raise ValueError(f"{where}: unknown task(s) {unknown} in 'tasks'; the run trains {sorted(task_names)}")
            if any(not isinstance(w, (int, float)) or not w >= 0 for w in tasks.values()) or sum(tasks.values()) <= 0:
                raise ValueError(f"{where}: task weights must be >= 0 and not all 0, got {tasks}")
            tasks = {str(n): float(w) for n, w in tasks.items()}
        narrow = stage.get("narrow")
        if narrow is not None:
            from .media_tasks import MEDIA_TASKS
            if isinstance(narrow, str) or not isinstance(narrow, (list, tuple)) or not narrow:
                raise ValueError(f"{where}: 'narrow' must be a non-empty list of media task names, got {narrow!r}")
            bad = sorted(str(n) for n in narrow if n not in MEDIA_TASKS or n not in task_names)
            if bad:
                raise ValueError(f"{where}: unknown task(s) {bad} in 'narrow'; the run's media tasks are "
                                 f"{sorted(n for n in task_names if n in MEDIA_TASKS)}")
            narrow = tuple(sorted(set(narrow)))
        parsed.append(CurriculumStage(updates, kinds["image"], kinds["video"], tasks, narrow))
    return parsed


def item_stage(caption: str, media: str) -> str:
    """The curriculum kind of a world item from its caption: an image's "single" / "count" / "relation"; a clip's
    "still" (every object stays still) or "moving"."""
    from ..eval.captions import parse_caption
    clauses = parse_caption(caption)
    if clauses is None:
        raise ValueError(f"a curriculum needs world captions; {caption!r} is not in the world's grammar")
    if media == "image":
        if clauses.kind not in IMAGE_STAGES:
            raise ValueError(f"a curriculum's image items must be image captions; {caption!r} describes a clip")
        return clauses.kind
    if clauses.kind != "video":
        raise ValueError(f"a curriculum's video items must be clip captions; {caption!r} describes an image")
    return "still" if all(o.motion == "stays still" for o in clauses.objects) else "moving"


class Curriculum:
    """The run's stages over its updates: `stage_at(step)` and the item subset each stage allows."""

    def __init__(self, stages: list[CurriculumStage]) -> None:
        if not stages:
            raise ValueError("a curriculum needs at least one stage")
        self.stages = stages
        self.starts: list[int] = []
        start = 0
        for stage in stages:
            self.starts.append(start)
            start += stage.updates or 0
        self.labels: dict[str, list[str]] = {}         # media kind -> each training item's kind

    def stage_at(self, step: int) -> int:
        """Index of the stage that update `step` (0-based) belongs to; past the last stage's end, the last stage."""
        index = 0
        for i, start in enumerate(self.starts):
            if step >= start:
                index = i
        return index

    def label_items(self, media: str, length: int, caption: Callable[[int], str]) -> list[str]:
        """Each item's kind (`item_stage`) of the `media` training data, read once per run from its captions."""
        if media not in self.labels:
            self.labels[media] = [item_stage(caption(i), media) for i in range(length)]
        return self.labels[media]

    def subset(self, index: int, media: str, task: str | None = None) -> torch.Tensor:
        """Indices [n] of the labelled `media` items that stage `index` trains on, for `task` when given (`label_items`
        first)."""
        allowed = set(self.stages[index].allows(media, task))
        chosen = [i for i, kind in enumerate(self.labels[media]) if kind in allowed]
        if not chosen:
            raise ValueError(f"curriculum stage {index + 1}: none of the {len(self.labels[media])} {media} training "
                             f"items is {' / '.join(sorted(allowed))}; cache more items or widen the stage")
        return torch.tensor(chosen, dtype=torch.long)
