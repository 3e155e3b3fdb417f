"""The shared flow-matching transformer behind the image and video heads.

A small diffusion transformer over the autoencoder's latent grid (DiT-style adaLN-Zero blocks, Peebles & Xie,
arXiv 2212.09748; the "flow head" of Show-o2, reference/multimodal.md §1) that predicts the rectified-flow velocity
`v = noise - x0` of a noisy latent `x_t = (1 - sigma) x0 + sigma noise`. It is conditioned by

- the timestep `t = 1000 sigma` (the value diffusers' `FlowMatchEulerDiscreteScheduler` hands a model), through a
  sinusoidal embedding and adaLN-Zero shift/scale/gate in every block, to which the mean of the condition tokens is
  added (a pooled condition, as Flux adds its pooled text vector);
- the backbone's hidden states at the learned query tokens [B, Nq, cond_dim], through cross-attention;
- with `spatial_condition` (image heads), those same tokens read as a square grid over the image, row-major: each
  is added, through a projection that starts at zero, to the head tokens of its region (nearest-neighbour upsampling
  of the [sqrt(Nq), sqrt(Nq)] grid to the head's token grid). Cross-attention hands every head token the same
  condition, so where each object goes is left to the head; a head too small to settle a layout draws two objects
  of one prompt alike (the built-in model draws 'a red circle to the left of a yellow circle' as two yellow circles;
  docs/quality.md, "The heads alone"). On the spatial grid the backbone, which reads the prompt, can say what belongs
  where, and the head draws each region from its own token. Starting at zero, it can be added to a trained head
  (`TrainConfig.flow_head` with `init_from`) without changing what it computes until training moves it.

The head's raw output is the velocity itself (`prediction="velocity"`, the default) or a clean latent x0_hat
(`prediction="x0"`, JiT's x-prediction, Li & He, arXiv 2511.13720), which `forward` turns into the velocity
`(x_t - x0_hat) / max(sigma, X0_MIN_SIGMA)` it implies; either way `forward` returns a velocity, trained with the same
velocity loss, and sampled by the same scheduler, so the parameterisation is a training choice only.

Positions are fixed sinusoidal features of (time, row, column) of each latent patch, so the same weights handle any
grid size and any number of latent frames. Training drops the condition with probability `condition_dropout`
(replacing it by the backbone's states for an empty prompt, chosen by the caller), so classifier-free guidance works
at sampling time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone.norm import RMSNorm
from ..config_keys import reject_unknown_keys
from ..tokenizers.patchify import patchify, unpatchify

NUM_TRAIN_TIMESTEPS = 1000   # diffusers' FlowMatchEulerDiscreteScheduler default: timestep = 1000 * sigma
PREDICTIONS = ("velocity", "x0")
X0_MIN_SIGMA = 0.05          # x0 prediction: the velocity's denominator is clamped here (JiT clamps 1 - t at 0.05)
LOSS_WEIGHTINGS = ("none", "min-snr")   # per-noise-level weights of the training loss (`loss_weights`)
MIN_SNR_GAMMA = 5.0          # Min-SNR-gamma's clamp (Hang et al., arXiv 2303.09556, recommend 5)


@dataclass
class FlowHeadConfig:
    """One flow head. `cond_dim` is the backbone width (set by `ModelConfig`); JSON keys equal field names."""

    latent_channels: int = 16
    patch_size: int = 1                  # latent positions per head token along rows and columns
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    cond_dim: int = 32
    frequency_dim: int = 256             # sinusoidal timestep features
    position_frequencies: int = 16       # sinusoidal frequencies per position axis (time, row, column)
    max_latent_frames: int = 1           # 1 for the image head; > 1 lets the head denoise video latents
    prediction: str = "velocity"         # what the network outputs: "velocity" or "x0" (turned into a velocity)
    spatial_condition: bool = False      # also add each condition token to the head tokens of its region (images)

    def __post_init__(self) -> None:
        for name in ("latent_channels", "patch_size", "width", "depth", "num_heads", "cond_dim", "frequency_dim",
                     "position_frequencies", "max_latent_frames"):
            if getattr(self, name) <= 0:
                raise ValueError(f"flow head {name} must be > 0, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ValueError(f"flow head width ({self.width}) must be divisible by num_heads ({self.num_heads})")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"flow head prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.frequency_dim % 2:
            raise ValueError(f"flow head frequency_dim must be even, got {self.frequency_dim}")
        if self.spatial_condition and self.max_latent_frames != 1:
            raise ValueError(f"flow head spatial_condition reads its condition as one frame's grid; it needs "
                             f"max_latent_frames=1 (an image head), got {self.max_latent_frames}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlowHeadConfig":
        reject_unknown_keys(cls, data)
        return cls(**data)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t [B] (any real values, here 0..1000) -> [B, dim] cos/sin features (the DDPM/DiT embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                                          # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def grid_position_features(frames: int, rows: int, cols: int, n_freq: int, device: torch.device) -> torch.Tensor:
    """Sinusoidal features of every (time, row, column) of a grid -> [frames*rows*cols, 6*n_freq], row-major (t, r, c).

    Frequencies are 1 / 100^(k / n_freq), so positions up to a few hundred stay distinct."""
    freqs = 100.0 ** (-torch.arange(n_freq, device=device, dtype=torch.float32) / n_freq)   # [F]
    t, r, c = torch.meshgrid(torch.arange(frames, device=device), torch.arange(rows, device=device),
                             torch.arange(cols, device=device), indexing="ij")
    parts = []
    for axis in (t, r, c):
        args = axis.reshape(-1, 1).float() * freqs                                     # [N, F]
        parts += [torch.sin(args), torch.cos(args)]
    return torch.cat(parts, dim=-1)                                                     # [N, 6F]


def condition_grid(cond: torch.Tensor, cond_mask: torch.Tensor | None, rows: int, cols: int) -> torch.Tensor:
    """cond [B, M, W] read as a square grid of sqrt(M) x sqrt(M) tokens (row-major) over the image -> [B, rows*cols, W]:
    each of the head's `rows` x `cols` tokens (row-major) takes the token of the region it lies in (nearest-neighbour
    upsampling). Masked tokens (`cond_mask` [B, M] False) give zeros."""
    b, m, w = cond.shape
    g = math.isqrt(m)
    if g * g != m:
        raise ValueError(f"spatial_condition reads the condition tokens as a square grid, got {m} tokens")
    if cond_mask is not None:
        cond = cond * cond_mask.to(cond.dtype).unsqueeze(-1)
    grid = cond.transpose(1, 2).reshape(b, w, g, g)                                    # [B, W, g, g]
    grid = F.interpolate(grid, size=(rows, cols), mode="nearest")                      # [B, W, rows, cols]
    return grid.flatten(2).transpose(1, 2)                                             # [B, rows*cols, W]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, N, W], shift/scale [B, W]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, else cross-attention to it (with QK RMS-norm).

    The norms are the backbone's fp32 RMSNorm: under bf16 autocast a bf16 activation meets the fp32 gain in fp32
    (torch's fused `nn.RMSNorm` refuses mixed dtypes with a warning and runs unfused anyway)."""

    def __init__(self, width: int, num_heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_dim or width, 2 * width)
        self.q_norm = RMSNorm(width // num_heads, eps=1e-6)
        self.k_norm = RMSNorm(width // num_heads, eps=1e-6)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, W], context [B, M, Wc] (default x), context_mask [B, M] bool (True = attend) -> [B, N, W]."""
        b, n, w = x.shape
        ctx = x if context is None else context
        h = self.num_heads
        q = self.q_norm(self.q(x).view(b, n, h, -1)).transpose(1, 2)                  # [B, H, N, d]
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, -1).unbind(2)                 # 2 x [B, M, H, d]
        k, v = self.k_norm(k).transpose(1, 2), v.transpose(1, 2)                      # [B, H, M, d]
        mask = None if context_mask is None else context_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                 # [B, H, N, d]
        return self.out(out.transpose(1, 2).reshape(b, n, w))


class FlowBlock(nn.Module):
    """adaLN-Zero block: self-attention, cross-attention to the condition tokens, MLP; each gated by the timestep."""

    def __init__(self, cfg: FlowHeadConfig) -> None:
        super().__init__()
        w = cfg.width
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(w, cfg.num_heads)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.cross = Attention(w, cfg.num_heads, context_dim=w)
        self.norm3 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        hidden = int(w * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(w, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, w))
        self.ada = nn.Linear(w, 9 * w)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: torch.Tensor,
                cond_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, N, W], c [B, W] (timestep + pooled condition), cond [B, M, W] -> [B, N, W]."""
        s1, sc1, g1, s2, sc2, g2, s3, sc3, g3 = self.ada(F.silu(c)).chunk(9, dim=-1)   # 9 x [B, W]
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), s1, sc1))
        x = x + g2.unsqueeze(1) * self.cross(modulate(self.norm2(x), s2, sc2), cond, cond_mask)
        return x + g3.unsqueeze(1) * self.mlp(modulate(self.norm3(x), s3, sc3))


class FlowTransformer(nn.Module):
    """Velocity model v(x_t, t, cond) over a latent grid.

    forward(latents [B, C, T, h, w], timestep [B] in [0, 1000], cond [B, M, cond_dim], cond_mask [B, M] or None)
    -> velocity [B, C, T, h, w]. T must not exceed `max_latent_frames`.
    """

    def __init__(self, config: FlowHeadConfig) -> None:
        super().__init__()
        self.config = cfg = config
        w, p = cfg.width, cfg.patch_size
        self.patch_in = nn.Linear(cfg.latent_channels * p * p, w)
        self.pos_proj = nn.Linear(6 * cfg.position_frequencies, w, bias=False)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.frequency_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.cond_norm = RMSNorm(cfg.cond_dim, eps=1e-6)
        self.cond_proj = nn.Linear(cfg.cond_dim, w)
        self.pool_proj = nn.Linear(w, w)
        self.spatial_proj = nn.Linear(w, w) if cfg.spatial_condition else None
        self.blocks = nn.ModuleList(FlowBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(w, 2 * w)
        self.patch_out = nn.Linear(w, cfg.latent_channels * p * p)
        zero = [self.ada_out, self.patch_out] + ([self.spatial_proj] if self.spatial_proj is not None else [])
        for layer in zero:          # adaLN-Zero: the untrained head predicts v = 0; a new spatial condition adds 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def check_latents(self, latents: torch.Tensor) -> None:
        cfg = self.config
        if latents.ndim != 5 or latents.shape[1] != cfg.latent_channels:
            raise ValueError(f"expected latents [B, {cfg.latent_channels}, T, h, w], got {tuple(latents.shape)}")
        if latents.shape[2] > cfg.max_latent_frames:
            raise ValueError(f"this head denoises at most {cfg.max_latent_frames} latent frame(s), "
                             f"got {latents.shape[2]}")

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_latents(latents)
        cfg = self.config
        b, c, t, h, w = latents.shape
        p = cfg.patch_size
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        dtype = self.patch_in.weight.dtype
        x = self.patch_in(patchify(latents.to(dtype), p)[0])                            # [B, N, W]
        pos = grid_position_features(t, h // p, w // p, cfg.position_frequencies, latents.device)
        x = x + self.pos_proj(pos.to(dtype)).unsqueeze(0)
        cond_tokens = self.cond_proj(self.cond_norm(cond.to(dtype)))                    # [B, M, W]
        if cond_mask is None:
            pooled = cond_tokens.mean(dim=1)
        else:
            m = cond_mask.to(dtype).unsqueeze(-1)
            pooled = (cond_tokens * m).sum(1) / m.sum(1).clamp(min=1)
        if self.spatial_proj is not None:
            x = x + self.spatial_proj(condition_grid(cond_tokens, cond_mask, h // p, w // p))  # [B, N, W]
        emb = self.time_mlp(timestep_features(timestep, cfg.frequency_dim).to(dtype)) + self.pool_proj(pooled)
        for block in self.blocks:
            x = block(x, emb, cond_tokens, cond_mask)
        shift, scale = self.ada_out(F.silu(emb)).chunk(2, dim=-1)
        x = self.patch_out(modulate(self.norm_out(x), shift, scale))                    # [B, N, C*p*p]
        out = unpatchify(x, (t, h // p, w // p), p)                                     # [B, C, T, h, w]
        if cfg.prediction == "x0":                     # out is x0_hat: v = (x_t - x0_hat) / sigma
            sigma = (timestep.float() / NUM_TRAIN_TIMESTEPS).clamp(min=X0_MIN_SIGMA).view(b, 1, 1, 1, 1)
            out = ((latents.float() - out.float()) / sigma).to(out.dtype)
        return out


def sample_sigmas(n: int, generator: torch.Generator | None, device: torch.device,
                  logit_normal: bool = True) -> torch.Tensor:
    """Training noise levels [n] in (0, 1): logit-normal (SD3, arXiv 2403.03206 §3.1) or uniform.

    Drawn on the generator's device (a CPU generator keeps CPU and GPU runs equal), then moved to `device`."""
    where = generator.device if generator is not None else device
    if logit_normal:
        return torch.sigmoid(torch.randn(n, generator=generator, device=where)).to(device)
    return torch.rand(n, generator=generator, device=where).to(device)


def _min_snr_weights(sigmas: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma on the velocity loss, before normalising: SNR = ((1 - sigma) / sigma)^2; the x0 error is sigma
    times the velocity error (x0_hat = x_t - sigma v_hat), so the x0-space weight min(SNR, gamma) is
    min(SNR, gamma) sigma^2 = min((1 - sigma)^2, gamma sigma^2) on the velocity's squared error."""
    return torch.minimum((1 - sigmas) ** 2, gamma * sigmas ** 2)


@functools.lru_cache(maxsize=8)
def _min_snr_mean(gamma: float) -> float:
    """E[_min_snr_weights(sigma)] for the logit-normal sigma = sigmoid(u), u ~ N(0, 1), by the trapezoid rule."""
    u = torch.linspace(-10.0, 10.0, 40_001, dtype=torch.float64)
    density = torch.exp(-0.5 * u ** 2) / math.sqrt(2 * math.pi)
    return float(torch.trapezoid(density * _min_snr_weights(torch.sigmoid(u), gamma), u))


def loss_weights(sigmas: torch.Tensor, weighting: str = "none", gamma: float = MIN_SNR_GAMMA) -> torch.Tensor:
    """Per-row weights [n] of the velocity loss at noise levels `sigmas` [n]: ones for "none"; for "min-snr", the
    Min-SNR-gamma weights (arXiv 2303.09556) divided by their mean under the logit-normal training levels, so the
    loss keeps its scale on average and only its balance across noise levels changes."""
    if weighting == "none":
        return torch.ones_like(sigmas, dtype=torch.float32)
    if weighting == "min-snr":
        return _min_snr_weights(sigmas.float(), gamma) / _min_snr_mean(float(gamma))
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {LOSS_WEIGHTINGS}")


def flow_matching_loss(head: FlowTransformer, x0: torch.Tensor, cond: torch.Tensor,
                       cond_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       sigmas: torch.Tensor | None = None, weighting: str = "none") -> torch.Tensor:
    """Rectified-flow loss: x0 [B, C, T, h, w] clean latents, cond [B, M, cond_dim] -> scalar MSE of the velocity.

    x_t = (1 - sigma) x0 + sigma noise; target v = noise - x0; the head sees t = 1000 sigma. `weighting` ("none" /
    "min-snr", `loss_weights`) weighs each row's mean squared error by its noise level; "none" is the plain MSE."""
    b = x0.shape[0]
    if sigmas is None:
        sigmas = sample_sigmas(b, generator, x0.device)
    where = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=where, dtype=x0.dtype).to(x0.device)
    s = sigmas.to(x0.dtype).view(b, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    v = head(x_t, sigmas * NUM_TRAIN_TIMESTEPS, cond, cond_mask)
    if weighting == "none":
        return F.mse_loss(v.float(), (noise - x0).float())
    per_row = (v.float() - (noise - x0).float()).pow(2).flatten(1).mean(1)                # [B]
    return (loss_weights(sigmas, weighting).to(per_row.device) * per_row).mean()
