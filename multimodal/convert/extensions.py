"""Settings DeepSeek's `config.json` has no field for, kept in it under extra keys so our checkpoints round-trip:

- `engram`: `EngramConfig` as a dict (Engram memory layers; arXiv 2601.07372),
- `nsa`: `NSAConfig` as a dict (layer type `nsa`),
- `hyper`: `HyperConfig` as a dict (so a non-V4 layer mix may use, or not use, mHC).

Hugging Face ignores unknown keys, so a V3 / V3.2 / V4 checkpoint with none of these features stays loadable by
transformers; a checkpoint with Engram or NSA layers is only loadable by us (transformers has no such modules).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import BackboneConfig


def extension_fields(cfg: BackboneConfig) -> dict[str, Any]:
    """Extra `config.json` keys for `cfg` (empty when it uses none of the extensions)."""
    out: dict[str, Any] = {}
    if cfg.engram.layers:
        out["engram"] = dataclasses.asdict(cfg.engram)
    if "nsa" in cfg.layer_types:
        out["nsa"] = dataclasses.asdict(cfg.nsa)
        out["hyper"] = dataclasses.asdict(cfg.hyper)
    return out


def apply_extensions(cfg: BackboneConfig, hf: dict[str, Any]) -> BackboneConfig:
    """`cfg` (read from the standard keys of `hf`) with the extension keys of `hf` applied."""
    changes = {key: hf[key] for key in ("engram", "nsa", "hyper") if isinstance(hf.get(key), dict)}
    return cfg.replace(**changes) if changes else cfg
