"""Incremental-decoding caches, one state object per layer, held by `BackboneCache`.

- `WindowState`: the last `sliding_window - 1` shared-KV vectors of V4 layers with their storage index and padding
  flag (a query at storage index i sees keys i - window < j <= i), or every latent of MLA layers (window = None).
- `CompressorState`: the not-yet-compressed remainder of the current window (projected kv and gate), the previous
  window's overlap half (CSA), and every compressed entry emitted so far. CSA layers hold two: the attention's
  compressor and the lightning indexer's.

Rows of a batch are aligned in storage (prompts are left-padded), so storage indices and the compression window
boundaries are shared by all rows, as in the reference implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class WindowState:
    """keys [B, L, D] (+ optional extra [B, L, E], e.g. MLA's rope key), index [L] long, valid [B, L] bool."""

    window: int | None
    keys: torch.Tensor | None = None
    extra: torch.Tensor | None = None
    index: torch.Tensor | None = None
    valid: torch.Tensor | None = None

    def extend(self, keys: torch.Tensor, index: torch.Tensor, valid: torch.Tensor,
               extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Append new entries; return all visible (old + new) entries, then keep only what future queries need."""
        if self.keys is not None:
            keys = torch.cat([self.keys, keys], dim=1)
            index = torch.cat([self.index, index])
            valid = torch.cat([self.valid, valid], dim=1)
            if extra is not None:
                extra = torch.cat([self.extra, extra], dim=1)
        start = 0 if self.window is None else max(0, keys.shape[1] - (self.window - 1))
        keep = slice(start, None)
        self.keys, self.index, self.valid = keys[:, keep], index[keep], valid[:, keep]
        self.extra = extra[:, keep] if extra is not None else None
        return keys, extra, index, valid

    def reorder(self, beam_idx: torch.Tensor) -> None:
        if self.keys is not None:
            self.keys, self.valid = self.keys[beam_idx], self.valid[beam_idx]
            if self.extra is not None:
                self.extra = self.extra[beam_idx]


@dataclass
class CompressorState:
    """Remainder buffers [B, r, cD] (r < rate), overlap [B, rate, D], entries [B, T, D], count T."""

    buffer_kv: torch.Tensor | None = None
    buffer_gate: torch.Tensor | None = None
    overlap_kv: torch.Tensor | None = None
    overlap_gate: torch.Tensor | None = None
    entries: torch.Tensor | None = None
    count: int = 0

    def take_windows(self, kv: torch.Tensor, gate: torch.Tensor, rate: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Prepend the remainder, return the longest whole-window prefix and the first window's storage start."""
        first = self.count * rate
        if self.buffer_kv is not None and self.buffer_kv.shape[1]:
            kv, gate = torch.cat([self.buffer_kv, kv], dim=1), torch.cat([self.buffer_gate, gate], dim=1)
        usable = kv.shape[1] // rate * rate
        self.buffer_kv, self.buffer_gate = kv[:, usable:], gate[:, usable:]
        return kv[:, :usable], gate[:, :usable], first

    def append(self, new_entries: torch.Tensor) -> torch.Tensor:
        if self.entries is None:
            self.entries = new_entries
        elif new_entries.shape[1]:
            self.entries = torch.cat([self.entries, new_entries], dim=1)
        self.count += new_entries.shape[1]
        return self.entries

    def reorder(self, beam_idx: torch.Tensor) -> None:
        for name in ("buffer_kv", "buffer_gate", "overlap_kv", "overlap_gate", "entries"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[beam_idx])


@dataclass
class LayerState:
    window: WindowState
    compressor: CompressorState | None = None
    indexer: CompressorState | None = None
    engram: Any = None                        # EngramState (backbone/engram.py), created by the Engram module


@dataclass
class BackboneCache:
    """All layers' states plus how many tokens (padding included) each row has stored."""

    layers: list[LayerState] = field(default_factory=list)
    seen: int = 0

    @classmethod
    def for_config(cls, cfg) -> "BackboneCache":
        layers = []
        for t in cfg.layer_types:
            v4 = t in ("sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention")
            layers.append(LayerState(
                window=WindowState(window=cfg.attention.sliding_window if v4 else None),
                compressor=CompressorState() if t in ("compressed_sparse_attention", "heavily_compressed_attention") else None,
                indexer=CompressorState() if t in ("compressed_sparse_attention", "dsa") else None,
            ))
        return cls(layers=layers)

    def reorder(self, beam_idx: torch.Tensor) -> None:
        for layer in self.layers:
            for state in (layer.window, layer.compressor, layer.indexer, layer.engram):
                if state is not None:
                    state.reorder(beam_idx)
