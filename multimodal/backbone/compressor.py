"""Learned KV compression of V4's CSA and HCA layers (DeepSeek-V4 report §2.3; attention.md §4.5).

Every `rate` consecutive tokens become one entry: `C_w = norm(sum_j softmax_j(Z_j + B) * C_j)` with `C = x W_kv`,
`Z = x W_gate` and a learned per-slot bias `B` (DeepSeek name `ape`), the softmax taken per channel over the
window, and RoPE applied at the window's first storage position.

CSA (`overlap=True`) projects to two series, `Ca = [..., :D]` and `Cb = [..., D:]`; entry w pools window w's Cb
with window w-1's Ca, i.e. windows of width 2m and stride m. The first window's Ca half is empty (weight 0) unless a
cache carries the previous call's last window.
"""

from __future__ import annotations

import torch
from torch import nn

from .cache import CompressorState
from .norm import RMSNorm
from .rope import RotaryEmbedding, apply_rope


class Compressor(nn.Module):
    """x [B, S, dim] -> compressed entries. wkv, wgate [c*D, dim]; ape [rate, c*D] fp32; norm over D (c = 2 for CSA)."""

    def __init__(self, dim: int, head_dim: int, rate: int, overlap: bool, eps: float) -> None:
        super().__init__()
        c = 2 if overlap else 1
        self.head_dim, self.rate, self.overlap = head_dim, rate, overlap
        self.wkv = nn.Linear(dim, c * head_dim, bias=False)
        self.wgate = nn.Linear(dim, c * head_dim, bias=False)
        self.ape = nn.Parameter(torch.zeros(rate, c * head_dim, dtype=torch.float32))
        self.norm = RMSNorm(head_dim, eps)

    def forward(self, x: torch.Tensor, rotary: RotaryEmbedding, state: CompressorState | None) -> torch.Tensor:
        """Entries visible so far [B, T, D]: all earlier ones (from the cache) plus those this call completes."""
        b, d, m = x.shape[0], self.head_dim, self.rate
        kv, gate = self.wkv(x), self.wgate(x)                                       # [B, S, cD]
        if state is None:
            usable = kv.shape[1] // m * m
            kv, gate, first = kv[:, :usable], gate[:, :usable], 0
        else:
            kv, gate, first = state.take_windows(kv, gate, m)
        n_win = kv.shape[1] // m
        if n_win == 0:
            new = kv.new_zeros(b, 0, d)
        else:
            kv = kv.view(b, n_win, m, -1)                                           # [B, W, m, cD]
            gate = gate.view(b, n_win, m, -1) + self.ape
            if self.overlap:
                kv, gate = self._overlap_windows(kv, gate, state)                   # [B, W, 2m, D]
            weights = gate.softmax(dim=2, dtype=torch.float32).to(kv.dtype)
            new = self.norm((kv * weights).sum(dim=2))                              # [B, W, D]
            pos = (torch.arange(n_win, device=x.device) * m + first).unsqueeze(0).expand(b, -1)
            cos, sin = rotary(pos)
            new = apply_rope(new, cos, sin)
        return new if state is None else state.append(new)

    def _overlap_windows(self, kv: torch.Tensor, gate: torch.Tensor,
                         state: CompressorState | None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, W, m, 2D] two series -> [B, W, 2m, D]: slots [:m] = previous window's Ca, [m:] = this window's Cb."""
        b, n_win, m, _ = kv.shape
        d = self.head_dim
        prev_kv = kv.new_zeros(b, n_win, m, d)
        prev_gate = gate.new_full((b, n_win, m, d), float("-inf"))
        prev_kv[:, 1:], prev_gate[:, 1:] = kv[:, :-1, :, :d], gate[:, :-1, :, :d]
        if state is not None:
            if state.overlap_kv is not None:
                prev_kv[:, 0], prev_gate[:, 0] = state.overlap_kv.to(kv.dtype), state.overlap_gate.to(gate.dtype)
            state.overlap_kv, state.overlap_gate = kv[:, -1, :, :d].clone(), gate[:, -1, :, :d].clone()
        return torch.cat([prev_kv, kv[..., d:]], dim=2), torch.cat([prev_gate, gate[..., d:]], dim=2)
