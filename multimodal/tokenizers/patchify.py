"""Latent grid <-> backbone tokens: non-overlapping p x p spatial patches of every latent frame.

A latent clip ``(B, C, T', h, w)`` becomes ``T' * (h/p) * (w/p)`` tokens of ``C * p * p`` values, in
raster order (time, then rows, then columns), each with its integer position ``(t, row, col)`` on the
patch grid, which is what the backbone's 3D positions use. :func:`unpatchify` is the exact inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VisualTokens:
    """Tokens of a batch of images or videos.

    Attributes:
        tokens: (B, N, C * p * p) float, N = T' * gh * gw.
        positions: (N, 3) long, the (t, row, col) of each token on the patch grid.
        grid: (T', gh, gw), the patch grid.
        patch_size: p.
        num_frames: pixel frames of the input before padding to 1 + 4k (decoding trims to it).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    grid: tuple[int, int, int]
    patch_size: int
    num_frames: int

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "VisualTokens":
        """Move tokens (and positions) to ``device``; cast tokens to ``dtype``."""
        return VisualTokens(self.tokens.to(device=device, dtype=dtype), self.positions.to(device=device), self.grid, self.patch_size, self.num_frames)


def grid_positions(t: int, gh: int, gw: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(t * gh * gw, 3) long positions (time, row, col) in raster order."""
    tt, hh, ww = torch.meshgrid(
        torch.arange(t, device=device), torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij"
    )
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)


def patchify(latents: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, T', h, w) latents -> tokens (B, T' * h/p * w/p, C * p * p) and positions (N, 3)."""
    if latents.ndim != 5:
        raise ValueError(f"expected latents (B, C, T', h, w), got {tuple(latents.shape)}")
    b, c, t, h, w = latents.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"latent size {h}x{w} is not divisible by patch_size={p}")
    gh, gw = h // p, w // p
    # (B, C, T, gh, p, gw, p) -> (B, T, gh, gw, C, p, p) -> (B, T*gh*gw, C*p*p)
    x = latents.reshape(b, c, t, gh, p, gw, p).permute(0, 2, 3, 5, 1, 4, 6)
    tokens = x.reshape(b, t * gh * gw, c * p * p)
    return tokens, grid_positions(t, gh, gw, latents.device)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: tokens (B, T' * gh * gw, C * p * p) -> latents (B, C, T', gh*p, gw*p)."""
    if tokens.ndim != 3:
        raise ValueError(f"expected tokens (B, N, D), got {tuple(tokens.shape)}")
    b, n, d = tokens.shape
    t, gh, gw = grid
    p = patch_size
    if n != t * gh * gw:
        raise ValueError(f"{n} tokens do not fill the grid {grid} ({t * gh * gw} tokens)")
    if d % (p * p):
        raise ValueError(f"token width {d} is not a multiple of patch_size^2={p * p}")
    c = d // (p * p)
    # (B, T*gh*gw, C*p*p) -> (B, T, gh, gw, C, p, p) -> (B, C, T, gh, p, gw, p) -> (B, C, T, gh*p, gw*p)
    x = tokens.reshape(b, t, gh, gw, c, p, p).permute(0, 4, 1, 2, 5, 3, 6)
    return x.reshape(b, c, t, gh * p, gw * p)
