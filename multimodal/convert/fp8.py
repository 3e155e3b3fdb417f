"""FP8 (e4m3) weights with 128 x 128 block scales, as DeepSeek V3 / V4 checkpoints ship them.

A weight W [out, in] is stored as e4m3 values Q and one fp32 scale per 128 x 128 tile S [ceil(out/128),
ceil(in/128)] (named `<param>_scale_inv` by Hugging Face, `.scale` by DeepSeek's reference); W = Q * S tile-wise.
"""

from __future__ import annotations

import torch

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e4m3fnuz") if hasattr(torch, n))


def dequantize_blockwise(q: torch.Tensor, scale: torch.Tensor, block: int = 128,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q [out, in] (fp8), scale [ceil(out/b), ceil(in/b)] -> [out, in] in `dtype`."""
    out, inp = q.shape
    s = scale.float().repeat_interleave(block, 0)[:out].repeat_interleave(block, 1)[:, :inp]
    return (q.float() * s).to(dtype)


def quantize_blockwise(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse used by tests and exporters: w [out, in] -> (e4m3 [out, in], scale [ceil(out/b), ceil(in/b)])."""
    out, inp = w.shape
    rows, cols = -(-out // block), -(-inp // block)
    padded = torch.zeros(rows * block, cols * block, dtype=torch.float32)
    padded[:out, :inp] = w.float()
    tiles = padded.view(rows, block, cols, block)
    amax = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12)                               # [rows, cols]
    scale = amax / torch.finfo(torch.float8_e4m3fn).max
    q = (tiles / scale[:, None, :, None]).view(rows * block, cols * block)[:out, :inp].to(torch.float8_e4m3fn)
    return q, scale
