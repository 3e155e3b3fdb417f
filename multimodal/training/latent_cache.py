"""Latents of a training set, encoded once: the media tasks' frozen-autoencoder step, done before training.

The media tasks train on the frozen autoencoder's normalised latents (`media_tasks.encode_latents`), never on its
pixels. Encoding at every step costs as much as the model's own update for clips (17 frames through a 3-level
convolutional encoder), and it is the same work every epoch. With `TrainConfig.latent_cache = N` the trainer encodes
the first N training items of each visual kind once, before the first update, and the image and video tasks train on
those latents; the text task still reads captions of the full training set.

    data = cached_latents(root / "video.safetensors", autoencoder, videos, items=20_000)
    data[0]             # {"latents": [C, T', h, w] float32, "caption": "a small red square moves left", ...}

File layout (`<out>/latents/<kind>.safetensors`, written atomically): `latents` [sum of T', C, h, w] float32 (every
item's latent frames, item after item, so clips of different lengths fit one tensor), `offsets` [n + 1] int64,
`indices` [n] int64 (the dataset items they encode: user files that fail to decode are skipped, counted in the log),
and metadata naming what was encoded: the autoencoder's weight digest and the dataset's description. A resumed run
reads the file back; a file written for another autoencoder or other data is encoded again, never used.

A latent frame of a causal autoencoder depends only on the frames before it, so cutting an item's latents to the
first `1 + k` frames (what `MediaTask.collate` does to batch clips of different lengths) equals encoding the clip
cut to `1 + 4k` pixel frames.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

from ..io.atomic import atomic_path
from .media_tasks import encode_latents
from .tasks import caption_of

ENCODE_BATCH = 16


def autoencoder_digest(autoencoder: nn.Module) -> str:
    """SHA-256 of the autoencoder's tensors (names, dtypes, shapes and bytes): which weights made a cache."""
    digest = hashlib.sha256()
    for name, tensor in sorted(autoencoder.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def describe_dataset(dataset: Dataset, items: int) -> str:
    """A description of the first `items` items of `dataset` that changes when they change: the world's config, or
    the digest of the captions and file paths of user pairs."""
    config = getattr(dataset, "config", None)
    if config is not None:
        return f"{type(dataset).__name__}({config!r})[:{items}]"
    digest = hashlib.sha256()
    for i in range(items):
        digest.update(caption_of(dataset, i).encode() + b"\0")
    pairs = getattr(getattr(dataset, "dataset", None), "pairs", None)
    indices = getattr(dataset, "indices", None)
    if pairs is not None and indices is not None:
        for i in list(indices)[:items]:
            digest.update(str(getattr(pairs[int(i)], "path", "")).encode() + b"\0")
    return f"{type(dataset).__name__}[:{items}] sha256={digest.hexdigest()}"


class LatentDataset(Dataset):
    """Items `{"latents": [C, T', h, w], "caption": str}`: item i holds `latents[offsets[i]:offsets[i + 1]]` (flat
    latents [sum of T', C, h, w]) and the caption of item `indices[i]` of `base`."""

    def __init__(self, base: Dataset, latents: torch.Tensor, offsets: torch.Tensor, indices: torch.Tensor) -> None:
        if offsets.ndim != 1 or len(offsets) != len(indices) + 1 or int(offsets[-1]) != latents.shape[0]:
            raise ValueError(f"offsets {tuple(offsets.shape)} and indices {tuple(indices.shape)} do not index "
                             f"latents {tuple(latents.shape)}")
        if len(indices) == 0:
            raise ValueError("a LatentDataset needs at least one item")
        self.base, self.latents = base, latents
        self.offsets, self.indices = offsets.tolist(), indices.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def caption(self, index: int) -> str:
        return caption_of(self.base, self.indices[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} cached items")
        lo, hi = self.offsets[index], self.offsets[index + 1]
        return {"latents": self.latents[lo:hi].transpose(0, 1), "caption": self.caption(index)}   # [C, T', h, w]


class _Pixels(Dataset):
    """Item i of `dataset` as (i, pixels, None), or (i, None, reason) when its file does not decode: what the
    rendering / decoding processes of `encode_dataset` hand back (an exception would stop every worker)."""

    def __init__(self, dataset: Dataset, items: int) -> None:
        self.dataset, self.items = dataset, items

    def __len__(self) -> int:
        return self.items

    def __getitem__(self, i: int):
        from ..io import MediaError
        try:
            return i, self.dataset[i]["pixels"], None
        except MediaError as exc:
            return i, None, str(exc)


@torch.no_grad()
def encode_dataset(autoencoder: nn.Module, dataset: Dataset, items: int, log: Callable[[str], None] = print,
                   workers: int = 0, batch: int = ENCODE_BATCH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode the first `items` items of `dataset` (pixels [3, T, H, W] in [0, 1]) -> (latents [sum T', C, h, w]
    float32 on the CPU, offsets [n + 1] int64, indices [n] int64 of the items encoded). Up to `batch` consecutive
    items of one shape are encoded together; an item whose file does not decode (`MediaError`) is skipped and counted
    in the log. `workers` > 0 renders / decodes items in that many processes (in order: the result is the same)."""
    from torch.utils.data import DataLoader

    device = next(autoencoder.parameters()).device
    chunks: list[torch.Tensor] = []
    lengths: list[int] = []
    pending: list[torch.Tensor] = []
    indices: list[int] = []
    skipped = 0
    start, last_log = time.perf_counter(), time.perf_counter()

    def flush() -> None:
        if pending:
            z = encode_latents(autoencoder, torch.stack(pending).to(device))       # [B, C, T', h, w]
            chunks.extend(z.transpose(1, 2).to("cpu").unbind(0))                   # B x [T', C, h, w]
            lengths.extend([z.shape[2]] * z.shape[0])
            pending.clear()

    source = _Pixels(dataset, items)
    loader = DataLoader(source, batch_size=None, num_workers=workers, prefetch_factor=64) \
        if workers > 0 else (source[i] for i in range(items))
    for i, pixels, error in loader:
        if pixels is None:
            skipped += 1
            log(f"warning: skipped an undecodable item ({skipped} so far): {error}")
            continue
        indices.append(i)
        if pending and (pixels.shape != pending[0].shape or len(pending) == batch):
            flush()
        pending.append(pixels)
        if time.perf_counter() - last_log > 60:
            log(f"encoding latents: {i}/{items} items, {time.perf_counter() - start:.0f} s")
            last_log = time.perf_counter()
    flush()
    if not indices:
        raise ValueError(f"none of the first {items} items decodes; nothing to cache")
    offsets = torch.zeros(len(indices) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    return torch.cat(chunks), offsets, torch.tensor(indices, dtype=torch.long)


def cached_latents(path: str | Path, autoencoder: nn.Module, dataset: Dataset, items: int,
                   log: Callable[[str], None] = print, write: bool = True, workers: int = 0,
                   batch: int = ENCODE_BATCH) -> LatentDataset:
    """The first `items` items of `dataset` as a `LatentDataset`: read from `path` when it holds exactly these items
    encoded by this autoencoder, else encoded now (`encode_dataset`; written to `path` when `write`)."""
    path = Path(path)
    items = min(int(items), len(dataset))
    if items < 1:
        raise ValueError(f"latent_cache needs at least one item, got {items}")
    meta = {"autoencoder": autoencoder_digest(autoencoder), "dataset": describe_dataset(dataset, items),
            "items": str(items)}
    if path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata() == meta:
                return LatentDataset(dataset, *(handle.get_tensor(k) for k in ("latents", "offsets", "indices")))
        log(f"{path} was encoded from other weights or data; encoding again")
    start = time.perf_counter()
    latents, offsets, indices = encode_dataset(autoencoder, dataset, items, log, workers, batch)
    log(f"encoded {len(indices)} items into {tuple(latents.shape)} latents in {time.perf_counter() - start:.0f} s")
    if write:
        with atomic_path(path) as tmp:
            save_file({"latents": latents.contiguous(), "offsets": offsets, "indices": indices}, tmp, metadata=meta)
    return LatentDataset(dataset, latents, offsets, indices)


__all__ = ["LatentDataset", "cached_latents", "encode_dataset", "autoencoder_digest", "describe_dataset"]
