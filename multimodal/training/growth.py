"""Growing parts on a warm-started model (`TrainConfig.init_from`): what a run may add to the checkpoint's architecture.

Three parts can be added, each so that the model computes what the checkpoint did until training moves it:

| part | asked by | starts |
|------|----------|--------|
| a visual stem | `visual_stem: C` on a model without one | its output projection at zero |
| the image head's spatial condition | `flow_head.image.spatial_condition: true` | its projection at zero |
| head blocks | `flow_head.<kind>.depth` above the checkpoint's | after the checkpoint's blocks, adaLN-Zero gates at zero |

`grown_model_config` is the checkpoint's `ModelConfig` with them; `load_grown` loads the checkpoint's weights into the
model built from it, refusing any other mismatch, and logs each grown part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .config import TrainConfig


def grows_spatial_condition(run: TrainConfig, warm: Any) -> bool:
    """True when the run adds `spatial_condition` to the `init_from` model's (`warm`: its ModelConfig) image head."""
    asked = run.flow_head_overrides("image").get("spatial_condition") is True
    return asked and not warm.image_head.spatial_condition


def grown_depths(run: TrainConfig, warm: Any) -> dict[str, int]:
    """Head kind -> the run's `flow_head.<kind>.depth` where it is above the `init_from` model's (`warm`)."""
    grown = {}
    for kind in ("image", "video"):
        depth = run.flow_head_overrides(kind).get("depth")
        if isinstance(depth, int) and depth > getattr(warm, f"{kind}_head").depth:
            grown[kind] = depth
    return grown


def grown_model_config(run: TrainConfig, warm: Any, path: Path) -> Any:
    """The `init_from` model's ModelConfig (`warm`, from `path`) with the parts the run grows on it. A stem of another
    width on a model that has one is an error naming both."""
    config = warm
    if grows_spatial_condition(run, warm):
        config = config.replace(image_head={**config.image_head.to_dict(), "spatial_condition": True})
    for kind, depth in grown_depths(run, warm).items():
        config = config.replace(**{f"{kind}_head": {**getattr(config, f"{kind}_head").to_dict(), "depth": depth}})
    stem = run.visual_stem
    if stem is None or stem == config.visual_stem:
        return config
    if config.visual_stem:
        raise ValueError(f"init_from {path}: its model has a visual stem of {config.visual_stem} channels, the run "
                         f"asks for visual_stem={stem}; drop visual_stem, or start from scratch")
    return config.replace(visual_stem=stem)


def grown_parts(run: TrainConfig, warm: Any, model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
    """The parts `model` (built from `grown_model_config`) grows on the `init_from` model (`warm`), each as (its
    parameter-name prefixes, a log line with `{count}` for its parameters)."""
    parts = []
    if model.config.visual_stem and not warm.visual_stem:
        parts.append((("visual_stem.",), f"a new visual stem ({model.config.visual_stem} channels, {{count:,}} "
                                         f"parameters) on its model: its output projection starts at zero"))
    if grows_spatial_condition(run, warm):
        parts.append((("image_head.spatial_proj.",), "a new spatial condition on its image head ({count:,} "
                                                     "parameters): its projection starts at zero"))
    for kind, depth in grown_depths(run, warm).items():
        have = getattr(warm, f"{kind}_head").depth
        parts.append((tuple(f"{kind}_head.blocks.{i}." for i in range(have, depth)),
                      f"{depth - have} new block(s) after the {have} of its {kind} head ({{count:,}} parameters): "
                      f"their adaLN-Zero gates start at zero"))
    return parts


def load_grown(model: nn.Module, tensors: dict[str, torch.Tensor], parts: list[tuple[tuple[str, ...], str]],
               path: Path, log: Callable[[str], None]) -> None:
    """Load the `init_from` weights (`tensors`, from `path`) into `model`; only the grown `parts` may be missing from
    them and nothing may be left over (else a ValueError naming both lists). Logs the start and each grown part."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    new = tuple(prefix for prefixes, _ in parts for prefix in prefixes)
    if unexpected or any(not key.startswith(new) for key in missing):
        raise ValueError(f"init_from {path}: weights do not fit the model: missing {sorted(missing)}, unexpected "
                         f"{sorted(unexpected)}")
    log(f"starting from the weights of {path}")
    for prefixes, what in parts:
        count = sum(model.get_parameter(k).numel() for k in missing if k.startswith(prefixes))
        log(what.format(count=count) + ", so the model computes what the checkpoint did until training moves it")
