"""Causal 3D autoencoder: a clip of 1 + 4k frames <-> 1 + k continuous latent frames.

Layout (CogVideoX / Cosmos-CV style, see ``shared/reference/multimodal.md``): 4x temporal and 8x spatial
compression, ``latent_channels`` = 16 continuous channels, a diagonal-Gaussian posterior regularised by
a small KL term (``AutoencoderConfig.kl_weight``). Every temporal operation is causal and the first
frame is encoded alone, so a one-frame clip is an image and its latent is one latent frame.

Encoding and decoding run in temporal chunks (``chunk_frames`` pixel frames, ``chunk_frames // 4``
latent frames) with causal state carried between chunks, so peak memory is set by the chunk, not the
clip, and the result equals the whole-clip computation.

Per-channel latent statistics (``latent_mean``, ``latent_std``), measured on training clips after
training, are stored with the weights; :meth:`CausalAutoencoder.normalize_latents` maps latents to
roughly zero mean and unit variance for the backbone and diffusion heads.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from multimodal.empty_init import empty_init
from multimodal.io.atomic import atomic_path
from multimodal.tokenizers.causal_layers import (
    FrameGroupNorm,
    PixelShuffle3d,
    PixelUnshuffle3d,
    ResBlock,
    SpatialConv,
    SpatialDownsample,
    SpatialUpsample,
    TemporalDownsample,
    TemporalUpsample,
    streaming,
)
from multimodal.tokenizers.config import AutoencoderConfig

DEFAULT_WEIGHTS = "pipelines/shapes-demo/vae/autoencoder.safetensors"   # under multimodal/assets: the built-in model's vae


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device, moved to ``x``'s."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


class Encoder(nn.Module):
    """Pixels (B, 3, 1 + 4k, H, W) in [-1, 1] -> posterior moments (B, 2*latent, 1 + k, H/8, W/8)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        c0, c1, c2 = cfg.channels
        g, kt = cfg.norm_groups, cfg.temporal_kernel
        self.unshuffle = PixelUnshuffle3d(2)
        self.conv_in = SpatialConv(cfg.in_channels * 4, c0, 3)
        self.level0 = nn.Sequential(*[ResBlock(c0, g, kt) for _ in range(cfg.encoder_blocks[0])])
        self.down0 = SpatialDownsample(c0, c1)
        self.tdown0 = TemporalDownsample(c1)
        self.level1 = nn.Sequential(*[ResBlock(c1, g, kt) for _ in range(cfg.encoder_blocks[1])])
        self.down1 = SpatialDownsample(c1, c2)
        self.tdown1 = TemporalDownsample(c2)
        self.level2 = nn.Sequential(*[ResBlock(c2, g, kt) for _ in range(cfg.encoder_blocks[2])])
        self.norm_out = FrameGroupNorm(g, c2)
        self.conv_out = SpatialConv(c2, 2 * cfg.latent_channels, 3)
        # start with a narrow posterior (std ~ 0.02): with std 1 at init, sampled latents are mostly
        # noise and the decoder learns slowly; the KL term widens it where it can
        with torch.no_grad():
            self.conv_out.conv.bias[cfg.latent_channels :].fill_(cfg.logvar_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.level0(self.conv_in(self.unshuffle(x)))  # (B, c0, T, H/2, W/2)
        h = self.level1(self.tdown0(self.down0(h)))  # (B, c1, 1 + 2k, H/4, W/4)
        h = self.level2(self.tdown1(self.down1(h)))  # (B, c2, 1 + k, H/8, W/8)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents (B, latent, 1 + k, h, w) -> pixels (B, 3, 1 + 4k, 8h, 8w), roughly in [-1, 1]."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        c0, c1, c2 = cfg.channels
        g, kt = cfg.norm_groups, cfg.temporal_kernel
        self.conv_in = SpatialConv(cfg.latent_channels, c2, 3)
        self.level2 = nn.Sequential(*[ResBlock(c2, g, kt) for _ in range(cfg.decoder_blocks[2])])
        self.tup1 = TemporalUpsample(c2)
        self.up1 = SpatialUpsample(c2, c1)
        self.level1 = nn.Sequential(*[ResBlock(c1, g, kt) for _ in range(cfg.decoder_blocks[1])])
        self.tup0 = TemporalUpsample(c1)
        self.up0 = SpatialUpsample(c1, c0)
        self.level0 = nn.Sequential(*[ResBlock(c0, g, kt) for _ in range(cfg.decoder_blocks[0])])
        self.norm_out = FrameGroupNorm(g, c0)
        self.conv_out = SpatialConv(c0, cfg.in_channels * 4, 3)
        self.shuffle = PixelShuffle3d(2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.level2(self.conv_in(z))  # (B, c2, 1 + k, h, w)
        h = self.level1(self.up1(self.tup1(h)))  # (B, c1, 1 + 2k, 2h, 2w)
        h = self.level0(self.up0(self.tup0(h)))  # (B, c0, 1 + 4k, 4h, 4w)
        return self.shuffle(self.conv_out(F.silu(self.norm_out(h))))  # (B, 3, 1 + 4k, 8h, 8w)


class CausalAutoencoder(nn.Module):
    """Causal video autoencoder with 4x8x8 compression; an image is a one-frame clip.

    Pixels are float tensors ``(B, 3, T, H, W)`` in ``[-1, 1]`` with ``T = 1 + 4k`` and ``H, W``
    multiples of 8; latents are ``(B, latent_channels, 1 + k, H/8, W/8)``.
    """

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or AutoencoderConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        c = self.config.latent_channels
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))

    # ----------------------------------------------------------------- checks
    def _check_pixels(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected pixels (B, {self.config.in_channels}, T, H, W), got {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        self.config.latent_frames(t)  # raises unless t = 1 + 4k
        if h % 8 or w % 8:
            raise ValueError(f"height and width must be multiples of 8, got {h}x{w}")

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents (B, {self.config.latent_channels}, T', h, w), got {tuple(z.shape)}")

    # ----------------------------------------------------------------- encode
    def encode_moments(self, x: torch.Tensor, chunk_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, latent, 1 + k, H/8, W/8).

        ``chunk_frames`` (a multiple of 4) runs the encoder on the first frame, then on chunks of that
        many frames; ``None`` or ``0`` encodes the whole clip at once.
        """
        self._check_pixels(x)
        t = x.shape[2]
        if not chunk_frames or t <= 1 + chunk_frames:
            moments = self.encoder(x)
        else:
            if chunk_frames % 4:
                raise ValueError(f"chunk_frames must be a multiple of 4, got {chunk_frames}")
            with streaming(self.encoder):
                parts = [self.encoder(x[:, :, :1])]
                parts += [self.encoder(x[:, :, s : s + chunk_frames]) for s in range(1, t, chunk_frames)]
            moments = torch.cat(parts, dim=2)
        mean, logvar = moments.chunk(2, dim=1)  # (B, 2L, ...) -> 2 x (B, L, ...)
        return mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def encode(
        self,
        x: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        chunk_frames: int | None = -1,
    ) -> torch.Tensor:
        """Pixels (B, 3, 1 + 4k, H, W) -> latents (B, latent, 1 + k, H/8, W/8) (the posterior mean,
        or a sample when ``sample``). ``chunk_frames=-1`` uses ``config.chunk_frames``."""
        chunk = self.config.chunk_frames if chunk_frames == -1 else chunk_frames
        mean, logvar = self.encode_moments(x, chunk)
        if not sample:
            return mean
        return mean + torch.exp(0.5 * logvar) * _noise_like(mean, generator)

    # ----------------------------------------------------------------- decode
    def decode(self, z: torch.Tensor, chunk_frames: int | None = -1) -> torch.Tensor:
        """Latents (B, latent, 1 + k, h, w) -> pixels (B, 3, 1 + 4k, 8h, 8w), clamped to [-1, 1] outside
        training. ``chunk_frames`` pixel frames (``chunk_frames // 4`` latent frames) per chunk;
        ``-1`` uses ``config.chunk_frames``, ``None`` or ``0`` decodes at once."""
        self._check_latents(z)
        chunk = self.config.chunk_frames if chunk_frames == -1 else chunk_frames
        t = z.shape[2]
        step = (chunk or 0) // self.config.temporal_compression
        if not step or t <= 1 + step:
            x = self.decoder(z)
        else:
            with streaming(self.decoder):
                parts = [self.decoder(z[:, :, :1])]
                parts += [self.decoder(z[:, :, s : s + step]) for s in range(1, t, step)]
            x = torch.cat(parts, dim=2)
        return x if self.training else x.clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: returns (reconstruction (B, 3, T, H, W), mean, logvar) of a sampled latent."""
        mean, logvar = self.encode_moments(x, None)
        z = mean + torch.exp(0.5 * logvar) * _noise_like(mean, generator)
        return self.decoder(z), mean, logvar

    # ----------------------------------------------------------------- latent statistics
    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """(B, L, T', h, w) raw latents -> per-channel standardised latents."""
        return (z - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_latents`."""
        return z * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def set_latent_statistics(self, latents: torch.Tensor) -> None:
        """Store per-channel mean and std of raw latents (B, L, T', h, w)."""
        flat = latents.transpose(0, 1).reshape(latents.shape[1], -1)  # (L, B*T'*h*w)
        self.latent_mean.copy_(flat.mean(dim=1))
        self.latent_std.copy_(flat.std(dim=1).clamp_min(1e-6))

    # ----------------------------------------------------------------- weights
    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32, metadata: dict | None = None) -> Path:
        """Write weights + config to one safetensors file, atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in self.state_dict().items()}
        meta = {"config": self.config.to_json(), "format": "multimodal.CausalAutoencoder"}
        meta.update({k: str(v) for k, v in (metadata or {}).items()})
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=meta)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> "CausalAutoencoder":
        """Load a safetensors file written by :meth:`save_pretrained` (default: the shipped weights,
        trained on the shapes world at 64x64). Weights are cast to float32."""
        if path is None:
            path = resources.files("multimodal.assets").joinpath(DEFAULT_WEIGHTS)
        path = Path(str(path))
        if not path.is_file():
            raise FileNotFoundError(f"autoencoder weights not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError(f"{path} has no autoencoder config in its safetensors metadata")
        with empty_init():                                # every weight comes from the file (strict load)
            model = cls(AutoencoderConfig.from_json(meta["config"]))
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        model.load_state_dict(state)
        model.metadata = {k: v for k, v in meta.items() if k != "config"}
        return model.to(device).eval()

    @staticmethod
    def read_metadata(path: str | os.PathLike) -> dict:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        if "config" in meta:
            meta["config"] = json.loads(meta["config"])
        return meta
