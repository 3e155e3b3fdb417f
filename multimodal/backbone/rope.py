"""Rotary position embeddings: plain, YaRN-scaled, interleaved pairs on the trailing dims (V4) or on a slice.

DeepSeek pairs adjacent channels `(x[2j], x[2j+1])` and rotates pair j by `pos * f_j` ("interleaved", GPT-J
style; ../shared/reference/attention.md §1.3). V4 puts the rotary slice at the END of each head (`[nope | rope]`),
MLA's decoupled key is rope-only. YaRN follows arXiv 2309.00071 as the reference implementations compute it
(attention.md §1.4): frequencies between the `beta_fast` / `beta_slow` correction dims are ramped from the
original to the `1/factor`-interpolated ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import RopeScaling


def yarn_correction_range(beta_fast: float, beta_slow: float, dim: int, base: float, original_max: int) -> tuple[float, float]:
    """The dim indices where a frequency completes `beta_fast` / `beta_slow` rotations in `original_max` tokens."""

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original_max / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = math.floor(correction_dim(beta_fast)), math.ceil(correction_dim(beta_slow))
    return max(low, 0), min(high, dim - 1)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature `0.1 * mscale * ln(factor) + 1` (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_inv_freq(dim: int, base: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """Inverse frequencies [dim // 2] (fp32), YaRN-ramped when `scaling` is given."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim           # [dim/2]
    inv_freq = 1.0 / (base ** exponents)
    if scaling is None:
        return inv_freq
    low, high = yarn_correction_range(scaling.beta_fast, scaling.beta_slow, dim, base,
                                      scaling.original_max_position_embeddings)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    # ramp = 0 keeps the original frequency (high-frequency dims), ramp = 1 interpolates by 1/factor
    return inv_freq / scaling.factor * ramp + inv_freq * (1 - ramp)


class RotaryEmbedding(nn.Module):
    """cos / sin tables for integer positions. positions [B, S] -> (cos, sin), each [B, S, dim // 2] fp32."""

    def __init__(self, dim: int, base: float, scaling: RopeScaling | None = None, attention_factor: float = 1.0) -> None:
        super().__init__()
        self.dim = dim
        self.attention_factor = attention_factor
        self.register_buffer("inv_freq", rope_inv_freq(dim, base, scaling), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)   # [B, S, dim/2]
        return freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the trailing `2 * cos.shape[-1]` dims of x in interleaved pairs (in fp32); leading dims pass through.

    x: [B, S, ..., D]; cos, sin: [B, S, rd/2] broadcast over the middle (head) dims. Use `-sin` for the inverse.
    Pair j is the complex number x[2j] + i x[2j+1], multiplied by cos + i sin.
    """
    half = cos.shape[-1]
    rd = 2 * half
    for _ in range(x.dim() - cos.dim()):                                   # [B, S, 1.., rd/2]
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    pairs = x[..., -rd:].float().unflatten(-1, (half, 2)).contiguous()     # [..., rd/2, 2]
    rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.complex(cos, sin)).flatten(-2).to(x.dtype)
    return rotated if rd == x.shape[-1] else torch.cat([x[..., :-rd], rotated], dim=-1)
