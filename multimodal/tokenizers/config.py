"""Configuration of the causal 3D autoencoder.

The autoencoder maps a clip of ``1 + 4k`` RGB frames of ``H x W`` pixels to ``1 + k`` latent frames of
``H/8 x W/8`` positions with ``latent_channels`` continuous channels (4x temporal, 8x spatial
compression, the CogVideoX / Cosmos-CV layout). JSON keys equal the field names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..config_keys import reject_unknown_keys


@dataclass
class AutoencoderConfig:
    """Flat config of :class:`~multimodal.tokenizers.autoencoder.CausalAutoencoder`.

    Attributes:
        in_channels: pixel channels (3 for RGB).
        latent_channels: channels of the continuous latent (16, as in CogVideoX and Cosmos-CV).
        channels: widths of the three resolution levels, at H/2, H/4 and H/8.
        encoder_blocks: residual blocks per level in the encoder.
        decoder_blocks: residual blocks per level in the decoder.
        temporal_kernel: kernel length of the causal temporal convolutions.
        norm_groups: groups of the per-frame GroupNorm (must divide every width).
        kl_weight: weight of the KL regulariser of the diagonal-Gaussian posterior.
        logvar_init: initial bias of the posterior log-variance (a narrow posterior to start).
        logvar_min / logvar_max: clamp of the posterior log-variance.
        chunk_frames: pixel frames per chunk in chunked encoding (a multiple of 4); the decoder uses
            ``chunk_frames // 4`` latent frames per chunk.
    """

    in_channels: int = 3
    latent_channels: int = 16
    channels: tuple[int, int, int] = (48, 96, 160)
    encoder_blocks: tuple[int, int, int] = (1, 1, 1)
    decoder_blocks: tuple[int, int, int] = (1, 1, 2)
    temporal_kernel: int = 3
    norm_groups: int = 8
    kl_weight: float = 1e-6
    logvar_init: float = -8.0
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    chunk_frames: int = 16
    temporal_compression: int = field(init=False, default=4)
    spatial_compression: int = field(init=False, default=8)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.encoder_blocks = tuple(int(b) for b in self.encoder_blocks)
        self.decoder_blocks = tuple(int(b) for b in self.decoder_blocks)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {self.latent_channels}")
        if len(self.channels) != 3:
            raise ValueError(f"channels must have 3 levels (H/2, H/4, H/8), got {self.channels}")
        for name in ("encoder_blocks", "decoder_blocks"):
            blocks = getattr(self, name)
            if len(blocks) != 3 or min(blocks) < 0:
                raise ValueError(f"{name} must be 3 non-negative counts, got {blocks}")
        for c in self.channels:
            if c % self.norm_groups:
                raise ValueError(f"norm_groups={self.norm_groups} must divide every width in channels={self.channels}")
        if self.temporal_kernel < 1:
            raise ValueError(f"temporal_kernel must be >= 1, got {self.temporal_kernel}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.logvar_min >= self.logvar_max:
            raise ValueError(f"logvar_min={self.logvar_min} must be < logvar_max={self.logvar_max}")
        if self.chunk_frames < 4 or self.chunk_frames % 4:
            raise ValueError(f"chunk_frames must be a positive multiple of 4, got {self.chunk_frames}")

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a clip of ``num_frames = 1 + 4k`` pixel frames: ``1 + k``."""
        if num_frames < 1 or (num_frames - 1) % self.temporal_compression:
            raise ValueError(f"a clip must have 1 + 4k frames, got {num_frames}")
        return 1 + (num_frames - 1) // self.temporal_compression

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames decoded from ``latent_frames = 1 + k`` latent frames: ``1 + 4k``."""
        if latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
        return 1 + (latent_frames - 1) * self.temporal_compression

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("temporal_compression")
        d.pop("spatial_compression")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        known = {k: v for k, v in d.items() if k not in ("temporal_compression", "spatial_compression")}
        reject_unknown_keys(cls, known)
        return cls(**known)

    @classmethod
    def from_json(cls, text: str) -> "AutoencoderConfig":
        return cls.from_dict(json.loads(text))
