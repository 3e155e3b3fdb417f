"""Training and evaluation of the causal 3D autoencoder on shapes-world frames.

The loop is budgeted by wall-clock time: the learning rate follows a warm-up then a cosine decay over
``minutes``, so a run of any length ends annealed. Each step sees one batch of videos (``video_frames``
frames) and one batch of images (one-frame clips), a ``world_fraction`` of them the shapes world's own training
samples and the rest the rougher stand-in renderer's (``multimodal.tokenizers.training_frames``), with loss

    L1(x̂, x) + MSE(x̂, x) + kl_weight * KL(q(z|x) || N(0, I))

on pixels in [-1, 1]. Checkpoints are written atomically (safetensors) every ``save_every_minutes``
and at the end, after per-channel latent statistics are measured on training clips.

Evaluation reports PSNR in dB on uint8 pixels (MSE over each sample, averaged over samples) for
images and 17-frame videos of the world's test split (``source="stand-in"`` measures the stand-in's instead).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.tokenizers.training_frames import batch


@dataclass
class AutoencoderTrainConfig:
    """Options of :func:`train_autoencoder`."""

    out: str = "runs/autoencoder/autoencoder.safetensors"
    minutes: float = 29.0
    max_steps: int = 0  # 0: no step limit, only the time budget
    lr: float = 8e-4
    min_lr_ratio: float = 0.02
    warmup_steps: int = 50
    weight_decay: float = 0.0
    video_batch: int = 2
    video_frames: int = 9
    image_batch: int = 8
    world_fraction: float = 0.8  # share of training clips from the world; the rest from the stand-in renderer
    seed: int = 0
    threads: int = 2
    save_every_minutes: float = 5.0
    stats_clips: int = 64
    save_dtype: str = "float32"
    log_every: int = 25
    device: str = "cpu"
    eval_images: int = 64
    eval_videos: int = 16

    def __post_init__(self) -> None:
        if self.minutes <= 0 and self.max_steps <= 0:
            raise ValueError(f"need minutes > 0 or max_steps > 0, got minutes={self.minutes}, max_steps={self.max_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.video_frames < 1 or (self.video_frames - 1) % 4:
            raise ValueError(f"video_frames must be 1 + 4k, got {self.video_frames}")
        if self.video_batch < 0 or self.image_batch < 0 or self.video_batch + self.image_batch == 0:
            raise ValueError(f"batch sizes must be >= 0 and not both 0, got video_batch={self.video_batch}, image_batch={self.image_batch}")
        if not 0.0 <= self.world_fraction <= 1.0:
            raise ValueError(f"world_fraction must be in [0, 1], got {self.world_fraction}")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}")


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per sample of uint8-quantised pixels; inputs (B, 3, T, H, W) in [-1, 1]. -> (B,)"""
    ref = ((reference.clamp(-1, 1) + 1) * 127.5).round()
    rec = ((reconstruction.clamp(-1, 1) + 1) * 127.5).round()
    mse = (ref - rec).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return 10.0 * torch.log10(255.0**2 / mse)


@torch.no_grad()
def evaluate_psnr(
    model: CausalAutoencoder,
    num_images: int = 16,
    num_videos: int = 4,
    video_frames: int = 17,
    split: str = "test",
    batch_size: int = 8,
    source: str = "world",
) -> dict[str, float]:
    """Mean PSNR (dB) of reconstructions of ``num_images`` images and ``num_videos`` videos of ``split``.

    ``source="world"``: the world's samples ``split_seed(split, i)``, i < n (its image, or the first ``video_frames``
    frames of its video); ``"stand-in"``: the stand-in renderer's seeds 0..n-1 (images) and 100000.. (videos)."""
    if source not in ("world", "stand-in"):
        raise ValueError(f"source must be 'world' or 'stand-in', got {source!r}")
    model.eval()
    world = 1.0 if source == "world" else 0.0
    result: dict[str, float] = {}
    for name, n, frames, first_seed in (("image", num_images, 1, 0), ("video", num_videos, video_frames, 100_000)):
        first_seed = 0 if world else first_seed
        scores = []
        for s in range(0, n, batch_size):
            seeds = range(first_seed + s, first_seed + min(n, s + batch_size))
            x = batch(seeds, frames, split, world_fraction=world).to(model.latent_mean.device)
            scores.append(psnr(x, model.decode(model.encode(x))))
        if n:
            result[f"{name}_psnr"] = float(torch.cat(scores).mean())
            result[f"{name}_count"] = n
    return result


@torch.no_grad()
def measure_latent_statistics(model: CausalAutoencoder, clips: int, video_frames: int, seed: int) -> None:
    """Set ``model.latent_mean/std`` from the posterior means of ``clips`` of the world's training videos and
    images (what the model sees)."""
    model.eval()
    half = max(1, clips // 2)
    device = model.latent_mean.device
    vids = model.encode(batch(range(seed, seed + half), video_frames, "train", world_fraction=1.0).to(device))
    imgs = model.encode(batch(range(seed + half, seed + 2 * half), 1, "train", world_fraction=1.0).to(device))
    # (B, L, T', h, w) -> (B*T', L, 1, h, w) so images and videos pool together
    flat = torch.cat([vids.transpose(1, 2).reshape(-1, vids.shape[1], 1, *vids.shape[3:]), imgs], dim=0)
    model.set_latent_statistics(flat)


def _lr_at(cfg: AutoencoderTrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_autoencoder(
    cfg: AutoencoderTrainConfig,
    model_config: AutoencoderConfig | None = None,
    log=print,
) -> tuple[CausalAutoencoder, dict]:
    """Train a :class:`CausalAutoencoder` within ``cfg.minutes`` (and/or ``cfg.max_steps``); return it
    and a summary (steps, seconds, last losses, test PSNR)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = CausalAutoencoder(model_config or AutoencoderConfig()).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    out = Path(cfg.out)
    budget = cfg.minutes * 60.0
    start = last_save = time.monotonic()
    cpu_start = time.process_time()  # CPU time this process got (the machine may be shared)
    step, seed_cursor, history = 0, cfg.seed * 1_000_003, []
    kl_w = model.config.kl_weight
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    while True:
        elapsed = time.monotonic() - start
        progress = max(elapsed / budget if budget > 0 else 0.0, step / cfg.max_steps if cfg.max_steps else 0.0)
        if progress >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step, progress)
        loss_parts = []
        opt.zero_grad(set_to_none=True)
        for n, frames in ((cfg.video_batch, cfg.video_frames), (cfg.image_batch, 1)):
            if n == 0:
                continue
            seeds = range(seed_cursor, seed_cursor + n)
            x = batch(seeds, frames, "train", cfg.world_fraction).to(cfg.device)  # (n, 3, frames, 64, 64)
            seed_cursor += n
            rec, mean, logvar = model(x, generator=gen)
            err = rec - x
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
            loss = err.abs().mean() + err.pow(2).mean() + kl_w * kl
            loss.backward()
            loss_parts.append(float(loss.detach()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        history.append(sum(loss_parts))
        if step % cfg.log_every == 0:
            log(f"step {step:5d}  {elapsed / 60:5.1f} min  lr {opt.param_groups[0]['lr']:.2e}  loss {np.mean(history[-cfg.log_every:]):.5f}")
        if time.monotonic() - last_save > cfg.save_every_minutes * 60:
            model.save_pretrained(out.with_suffix(".partial.safetensors"), metadata={"step": step})
            last_save = time.monotonic()
            model.train()
    seconds = time.monotonic() - start
    cpu_seconds_train = time.process_time() - cpu_start
    measure_latent_statistics(model, cfg.stats_clips, cfg.video_frames, seed=5_000_000)
    scores = evaluate_psnr(model, num_images=cfg.eval_images, num_videos=cfg.eval_videos)
    stand_in = evaluate_psnr(model, num_images=cfg.eval_images, num_videos=cfg.eval_videos, source="stand-in")
    summary = {"steps": step, "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds_train, 1),
               "final_loss": float(np.mean(history[-50:])) if history else float("nan"), **scores,
               **{f"stand_in_{k}": v for k, v in stand_in.items() if k.endswith("psnr")}}
    model.save_pretrained(out, dtype=getattr(torch, cfg.save_dtype), metadata=summary)
    partial = out.with_suffix(".partial.safetensors")
    if partial.exists():
        partial.unlink()
    log(f"done: {summary}")
    return model, summary
