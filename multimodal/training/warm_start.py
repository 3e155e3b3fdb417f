"""Warm start (`TrainConfig.init_from`): a run whose first weights are a trained model's, i.e. fine-tuning.

    multimodal train --init-from shapes --data my_pairs/ --out runs/mine      # the built-in model on your pairs
    multimodal train --preset shapes-demo --init-from runs/a/pipeline --out runs/b   # more updates of a run

A unified-model run (a task that sees pixels) starts from a saved pipeline folder or a built-in model name: its
model weights, its tokenizer, and its autoencoder unless `TrainConfig.autoencoder` names another. A text-only run
starts from the `model/` folder a text run exports (config.json + model.safetensors + tokenizer.json). The
architecture is the checkpoint's: `preset` is not used, and `model` / `flow_head` overrides must agree with it
(a disagreement is an error naming the fields). Weights stored in bf16, like the built-in model's, are widened to
fp32. The optimizer, the schedule, the EMA and the data position start fresh; continuing a run is `--resume`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import BackboneConfig


@dataclass
class WarmStart:
    """A trained model to start from: its folder, architecture, fp32 weights and component files."""

    path: Path
    config: Any                          # ModelConfig (unified model) or BackboneConfig (text-only)
    tensors: dict[str, torch.Tensor] | None   # its fp32 state dict, until the run's model takes it (then None)
    tokenizer_file: Path
    autoencoder_file: Path | None        # the pipeline's autoencoder, None for text-only checkpoints
    generation_config: Any = None        # the unified model's decoding defaults (GenerationConfig), kept by its export

    @property
    def backbone(self) -> BackboneConfig:
        return self.config.backbone if hasattr(self.config, "backbone") else self.config


def load_warm_start(name_or_path: str, media: bool) -> WarmStart:
    """The checkpoint `name_or_path` names: a pipeline folder or built-in model name when `media`, else a text
    model folder. Raises FileNotFoundError (ModelNotFoundError for pipelines) naming the path when it is not one."""
    if media:
        from ..model import UnifiedModel
        from ..pipelines.core import resolve_model_path
        path = resolve_model_path(name_or_path)
        model = UnifiedModel.from_pretrained(path / "model")             # fp32, whatever the stored dtype
        vae = path / "vae" / "autoencoder.safetensors"
        return WarmStart(path, model.config, model.state_dict(), path / "tokenizer" / "tokenizer.json",
                         vae if vae.is_file() else None, model.generation_config)
    from ..convert.checkpoint import load_pretrained
    path = Path(name_or_path)
    for name in ("config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"init_from {path}: no {name} (a text-only run starts from the model/ folder a "
                                    f"text run exports)")
    model = load_pretrained(path)                                         # fp32
    return WarmStart(path, model.config, model.state_dict(), path / "tokenizer.json", None)


def _differences(base: dict[str, Any], overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """'key: checkpoint -> override' for every override (nested dicts key by key) that changes `base`."""
    out = []
    for key, value in overrides.items():
        have = base.get(key, "<absent>")
        if isinstance(value, dict) and isinstance(have, dict):
            out += _differences(have, value, f"{prefix}{key}.")
        elif value != have:
            out.append(f"{prefix}{key}: {have!r} -> {value!r}")
    return out


def check_overrides(warm: WarmStart, model: dict[str, Any], flow_heads: dict[str, dict[str, Any]]) -> None:
    """ValueError naming every `model` (BackboneConfig) or per-head `flow_heads` override that disagrees with the
    checkpoint's architecture. `spatial_condition: true` on the image head and a `depth` above the checkpoint's head's
    are not disagreements: the run grows them on the checkpoint's head, starting where the model computes what the
    checkpoint did (`training/growth.py`)."""
    diffs = [f"model.{d}" for d in _differences(warm.backbone.to_dict(), model)]
    for kind, overrides in flow_heads.items():
        if overrides and hasattr(warm.config, f"{kind}_head"):
            head = getattr(warm.config, f"{kind}_head").to_dict()
            if kind == "image" and overrides.get("spatial_condition") is True:   # grown on the checkpoint's head
                head["spatial_condition"] = True
            depth = overrides.get("depth")
            if isinstance(depth, int) and not isinstance(depth, bool) and depth > head["depth"]:
                head["depth"] = depth                     # deeper: new blocks grown after the checkpoint's
            diffs += [f"flow_head.{kind}.{d}" for d in _differences(head, overrides)]
    if diffs:
        raise ValueError(f"init_from {warm.path}: the run's architecture overrides disagree with the checkpoint's "
                         f"({'; '.join(diffs)}); drop them, or start from scratch")
