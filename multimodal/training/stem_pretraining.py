"""Pretraining the visual stem: its convolutions learn to read what lies in each latent cell before the model uses them.

A stem grown on a trained model and trained through the captions alone learned no digits in 1,200 updates
(docs/quality.md, "The visual stem"): a caption names a digit in a few words of one sentence, and a misread digit costs
one token of its loss. A convolution over the same frozen latents, given the digit as its whole target, reads 87% of
unseen validation glyphs after ~110k examples (`benchmarks/digit_probe.py`). So the stem is first trained as a dense
reader of the world's objects, the way a vision tower is pretrained before a multimodal model reads its features:

    the stem's convolutions      latents [B, 16, h, w] -> features [B, W, h, w]
    three 1 x 1 readers          -> per latent cell: shape (none / square / circle / triangle / digit 0-9),
                                    colour, size of the object whose centre falls in that cell

Targets come from the world's own metadata (`WorldSample.objects`): the cell holding an object's centre (for a clip's
latent frame k >= 1, the mean centre over the pixel frames 4k - 3 .. 4k it encodes) gets its shape, colour and size;
a cell whose 8 x 8 pixels touch no object's box in those frames gets "none" (which teaches where objects are, for
counts and relations); every other cell, and a cell holding two centres, is left out of the loss. The latents are the
trainer's cached latents (`latent_cache.cached_latents`, same files and checks), so a training run's
`<out>/latents/*.safetensors` can be copied in and not encoded twice.

    multimodal train stem --out runs/stem --threads 2              # ~5 min on 2 CPU cores, encoding aside; then
    multimodal train --preset shapes-demo-7 --out runs/stage7      # visual_stem_init: runs/stem/visual_stem.safetensors

The result, `<out>/visual_stem.safetensors`, holds `conv1.*` and `conv2.*` of a `VisualStem` (its projection stays
zero-initialised in the model, so a pretrained stem grown on a trained model still leaves its function unchanged), with
metadata: the stem's width, the latent channels, the autoencoder's digest (a stem read latents of one autoencoder) and
the validation accuracies; `<out>/stem_report.json` has the same figures and the curve.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..config_keys import check
from ..data.world import COLOURS, DIGIT_SHAPES, SHAPES, SIZES, WorldSample
from ..io.atomic import atomic_path
from ..visual_stem import VisualStem
from .schedule import WarmupCosine

IGNORE = -100
SHAPE_CLASSES = ("none",) + SHAPES            # what a cell holds
COLOUR_CLASSES = tuple(COLOURS)
SIZE_CLASSES = tuple(SIZES)
STEM_KEYS = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias")


@dataclass
class StemPretrainConfig:
    """One pretraining run of the stem's convolutions (JSON keys = field names)."""

    width: int = 64                    # the stem's channels (TrainConfig.visual_stem of the run that uses it)
    images: int = 20_000               # first training images read (their latents are cached in <out>/latents/)
    videos: int = 4_000                # first training clips read (every latent frame is a training example)
    validation_images: int = 1_000     # first validation images / clips scored (unseen digit glyphs)
    validation_videos: int = 200
    train_samples: int = 100_000       # the training datasets' length, as the trainer builds them (cache file names)
    max_steps: int = 4_000             # updates
    batch_size: int = 256              # latent frames per update
    lr: float = 2e-3                   # AdamW, cosine to lr / 10 after min(100, max_steps / 10) warm-up updates
    weight_decay: float = 0.05
    eval_every: int = 500
    autoencoder: str = ""              # the frozen autoencoder's weights ("" = the shipped ones)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("width", "max_steps", "batch_size", "eval_every", "train_samples"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                  f"{name} must be an integer > 0, got {getattr(self, name)!r}")
        for name in ("images", "videos", "validation_images", "validation_videos"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                  f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        check(self.images + self.videos > 0, "images + videos must be > 0: the stem needs training frames")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")


def frame_range(k: int, temporal: int) -> range:
    """The pixel frames latent frame `k` of a causal autoencoder encodes: frame 0 alone, then `temporal` at a time."""
    return range(0, 1) if k == 0 else range(temporal * (k - 1) + 1, temporal * k + 1)


def cell_targets(sample: WorldSample, latent_frames: int, grid: tuple[int, int], cell: int = 8,
                 temporal: int = 4) -> torch.Tensor:
    """[T', 3, h, w] int64 targets of one world sample's latent frames: indices into SHAPE_CLASSES, COLOUR_CLASSES,
    SIZE_CLASSES at the cell of each object's centre, SHAPE_CLASSES "none" (colour and size IGNORE) at cells touching
    no object, IGNORE elsewhere (see the module docstring)."""
    h, w = grid
    out = torch.full((latent_frames, 3, h, w), IGNORE, dtype=torch.long)
    for k in range(latent_frames):
        frames = [t for t in frame_range(k, temporal) if t < sample.num_frames]
        touched = torch.zeros(h, w, dtype=torch.bool)
        centres: dict[tuple[int, int], list] = {}
        for obj in sample.objects:
            for t in frames:
                x0, y0, x1, y1 = obj.box(t)
                rows = slice(max(0, y0 // cell), min(h, (y1 - 1) // cell + 1))
                cols = slice(max(0, x0 // cell), min(w, (x1 - 1) // cell + 1))
                touched[rows, cols] = True
            cx = sum(obj.centre(t)[0] for t in frames) / len(frames)
            cy = sum(obj.centre(t)[1] for t in frames) / len(frames)
            key = (min(h - 1, max(0, int(cy // cell))), min(w - 1, max(0, int(cx // cell))))
            centres.setdefault(key, []).append(obj)
        out[k, 0][~touched] = SHAPE_CLASSES.index("none")
        for (r, c), objs in centres.items():
            if len(objs) == 1:
                o = objs[0]
                out[k, :, r, c] = torch.tensor([SHAPE_CLASSES.index(o.shape), COLOUR_CLASSES.index(o.colour),
                                                SIZE_CLASSES.index(o.size)])
    return out


class StemReader(nn.Module):
    """A `VisualStem`'s convolutions and three 1 x 1 readers: latents [B, C, h, w] -> logits per cell."""

    def __init__(self, latent_channels: int, width: int) -> None:
        super().__init__()
        self.stem = VisualStem(latent_channels, width, patch_size=1, dim=1)
        self.shape = nn.Conv2d(width, len(SHAPE_CLASSES), 1)
        self.colour = nn.Conv2d(width, len(COLOUR_CLASSES), 1)
        self.size = nn.Conv2d(width, len(SIZE_CLASSES), 1)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.stem.features(latents[:, :, None])[:, :, 0]                            # [B, W, h, w]
        return self.shape(f), self.colour(f), self.size(f)                              # [B, classes, h, w] each

    def loss(self, latents: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the three readers over the cells they are trained on; targets [B, 3, h, w]. The shape
        reader's loss is the mean over object cells plus the mean over empty cells, so the many empty cells (~70% of
        the labelled ones) do not drown the objects."""
        shape, colour, size = self(latents)
        per_cell = F.cross_entropy(shape, targets[:, 0], ignore_index=IGNORE, reduction="none")   # [B, h, w]
        objects, empty = targets[:, 0] > 0, targets[:, 0] == 0
        loss = sum(per_cell[m].sum() / m.sum().clamp(min=1) for m in (objects, empty))
        return loss + F.cross_entropy(colour, targets[:, 1], ignore_index=IGNORE) + \
            F.cross_entropy(size, targets[:, 2], ignore_index=IGNORE)

    def stem_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.stem.state_dict().items()
                if k in STEM_KEYS}


def frames_and_targets(data, base, items: int, cell: int, temporal: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every latent frame of the first `items` items of a `LatentDataset` over world dataset `base`, with targets:
    ([N, C, h, w] float32, [N, 3, h, w] int64)."""
    frames, targets = [], []
    for i in range(min(items, len(data))):
        z = data.latents[data.offsets[i]:data.offsets[i + 1]]          # [T', C, h, w] (no caption: `data[i]` draws one)
        frames.append(z)
        targets.append(cell_targets(base.sample(data.indices[i]), z.shape[0], tuple(z.shape[2:]), cell, temporal))
    return torch.cat(frames), torch.cat(targets)


@torch.no_grad()
def accuracies(reader: StemReader, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per-cell accuracies on labelled cells: objects' shapes, digits alone, empty cells, colours, sizes."""
    reader.eval()
    preds = [[], [], []]
    for chunk in x.split(1024):
        for i, logits in enumerate(reader(chunk)):
            preds[i].append(logits.argmax(1))
    reader.train()
    shape, colour, size = (torch.cat(p) for p in preds)
    digits = torch.tensor([SHAPE_CLASSES.index(d) for d in DIGIT_SHAPES])
    obj = y[:, 0] > 0
    is_digit = torch.isin(y[:, 0], digits)
    empty = y[:, 0] == 0

    def acc(pred, target, mask) -> float:
        return float((pred[mask] == target[mask]).float().mean()) if mask.any() else float("nan")

    return {"shape": acc(shape, y[:, 0], obj), "digit": acc(shape, y[:, 0], is_digit),
            "none": acc(shape, y[:, 0], empty), "colour": acc(colour, y[:, 1], obj), "size": acc(size, y[:, 2], obj),
            "objects": int(obj.sum()), "digits": int(is_digit.sum())}


def load_stem_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The convolutions and metadata of a pretrained stem file; a clear error naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"visual_stem_init {path}: no such file (make one with `multimodal train stem`)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:   # safetensors raises its own error types for a file that is not one
        raise ValueError(f"visual_stem_init {path}: not a safetensors file ({exc})") from exc
    missing = [k for k in STEM_KEYS if k not in tensors]
    if missing or not {"width", "latent_channels", "autoencoder"} <= set(meta):
        raise ValueError(f"visual_stem_init {path}: not a pretrained stem (missing tensors {missing}, metadata keys "
                         f"{sorted(meta)}); make one with `multimodal train stem`")
    return tensors, meta


def pretrain_stem(config: StemPretrainConfig, out: str | Path,
                  log: Callable[[str], None] = print) -> dict:
    """Train the stem's convolutions as a dense reader (module docstring); write `<out>/visual_stem.safetensors` and
    `<out>/stem_report.json`; return the report."""
    from ..data.datasets import WorldDataConfig, WorldDataset
    from ..tokenizers.autoencoder import CausalAutoencoder
    from .latent_cache import autoencoder_digest, cached_latents

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    device = torch.device(config.device)
    ae = CausalAutoencoder.from_pretrained(config.autoencoder or None, device=device).eval()
    ae.requires_grad_(False)
    cell = ae.config.spatial_compression
    temporal = ae.config.temporal_compression
    digest = autoencoder_digest(ae)

    def read(split: str, kind: str, items: int, length: int, cache: Path | None):
        if items == 0:
            return None
        base = WorldDataset(WorldDataConfig(split=split, modality=kind, length=length))
        path = cache / f"{kind}.safetensors" if cache is not None else out / "latents" / f"{split}-{kind}.safetensors"
        data = cached_latents(path, ae, base, items, log=log)
        return frames_and_targets(data, base, items, cell, temporal)

    def join(parts):
        parts = [p for p in parts if p is not None]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    x, y = join([read("train", k, n, config.train_samples, out / "latents")
                 for k, n in (("image", config.images), ("video", config.videos))])
    n_val = max(config.validation_images, config.validation_videos, 1)
    val = {k: read("validation", k, n, n_val, None)
           for k, n in (("image", config.validation_images), ("video", config.validation_videos)) if n}
    log(f"stem pretraining: {len(x):,} training latent frames ({int((y[:, 0] > 0).sum()):,} objects), "
        f"{sum(len(v[0]) for v in val.values()):,} validation frames, read in {time.perf_counter() - start:.0f} s")

    torch.manual_seed(config.seed)
    reader = StemReader(x.shape[1], config.width).to(device)
    opt = torch.optim.AdamW(reader.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    schedule = WarmupCosine(config.lr, max(1, min(100, config.max_steps // 10)), config.max_steps, 0.1)
    curve, order, pos = [], torch.randperm(len(x), generator=gen), 0
    t0 = time.perf_counter()
    for step in range(1, config.max_steps + 1):
        if pos + config.batch_size > len(order):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos:pos + config.batch_size]
        pos += config.batch_size
        schedule.apply(opt)
        schedule.advance()
        loss = reader.loss(x[idx].to(device), y[idx].to(device))
        if step == 1:
            first_loss = loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % config.eval_every == 0 or step == config.max_steps:
            row = {"step": step, "seconds": time.perf_counter() - t0, "loss": loss.item()}
            row.update({k: accuracies(reader, v[0].to(device), v[1].to(device)) for k, v in val.items()})
            curve.append(row)
            log(f"step {step}: loss {loss.item():.3f}; " + "; ".join(
                f"{k} shape {100 * a['shape']:.1f}% digit {100 * a['digit']:.1f}% colour {100 * a['colour']:.1f}%"
                for k, a in row.items() if isinstance(a, dict)))
    final = curve[-1]
    report = {"config": asdict(config), "autoencoder": digest, "training_frames": len(x), "first_loss": first_loss,
              "validation": {k: final[k] for k in val}, "curve": curve,
              "train_subset": accuracies(reader, x[:4096].to(device), y[:4096].to(device)),
              "seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}
    meta = {"width": str(config.width), "latent_channels": str(x.shape[1]), "autoencoder": digest,
            "validation": json.dumps(report["validation"])}
    with atomic_path(out / "visual_stem.safetensors") as tmp:
        save_file(reader.stem_state(), tmp, metadata=meta)
    (out / "stem_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out / 'visual_stem.safetensors'} ({report['seconds']:.0f} s)")
    return report


__all__ = ["StemPretrainConfig", "StemReader", "cell_targets", "frame_range", "load_stem_file", "pretrain_stem",
           "SHAPE_CLASSES", "COLOUR_CLASSES", "SIZE_CLASSES", "IGNORE"]
