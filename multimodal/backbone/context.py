"""What every layer needs to know about the current forward call: positions, padding, rotary tables, routing ids."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .rope import RotaryEmbedding


@dataclass
class ForwardContext:
    """Per-call facts shared by all layers.

    positions   [B, S] long  rotary positions of the new tokens (default: storage index)
    q_index     [S] long     storage index of each new token (same for every row: rows are aligned, left-padded)
    valid       [B, S] bool  False at padding tokens of this call
    rope        {"main" | "compress": (cos, sin)}, each [B, S, rd/2] fp32, at `positions`
    rotary      {"main" | "compress": RotaryEmbedding}, for tables at other positions (compressed entries)
    routing_ids [B, S] long or None: token ids for hash-routed MoE layers (and Engram addresses)
    engram_rows {layer: [B, S, d_mem]} or None: Engram memory rows gathered ahead of the layers that use them
    memo        per-call values that every layer would otherwise recompute identically (masks)
    """

    positions: torch.Tensor
    q_index: torch.Tensor
    valid: torch.Tensor
    rope: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rotary: dict[str, RotaryEmbedding]
    routing_ids: torch.Tensor | None = None
    engram_rows: dict[int, torch.Tensor] | None = None
    memo: dict = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return self.q_index.shape[0]
