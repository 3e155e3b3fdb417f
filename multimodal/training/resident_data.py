"""Training data held on the device: a media task's batch becomes two gathers instead of a Python loop.

On a GPU the shipped recipe spends most of each update in the host: every item is fetched from a Python dataset,
stacked, tokenised and copied, and every sample's sequence is built segment by segment (`UnifiedModel.build_batch`).
With `TrainConfig.resident_data`, the latents that `latent_cache` encoded and the tokenised captions of the same items
move to the training device once, before the first update:

    media = ResidentMedia.from_latents(latent_dataset, tokenizer, seq_len=64, device="cuda")
    batch = media.batch(stream.take_tensor(1024, media.device))
    batch["latents"]      # [1024, C, T', h, w] on the device
    batch["captions"]     # PackedText: ids [1024, 64], lengths [1024], on the device

and `UnifiedModel.packed_generation_batch` / `packed_caption_batch` build the sequences with whole-batch tensor ops,
so a step issues no host synchronisation (`tests/training/test_resident_data.py`; the CUDA check runs under
`torch.cuda.set_sync_debug_mode("error")`). Items are the same as the list path's for the same stream position, so
the data order of a run does not depend on the option.

With `resident_data` the language-modelling task (`text`) reads the resident captions too (`ResidentText`: the
captions of the cached images and clips, rather than of the whole training stream).

Only items of one latent length fit one tensor: a cache of clips of different lengths (user videos) is refused with
the lengths it holds; train such data without `resident_data`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..model import PackedText
from .latent_cache import LatentDataset


class ResidentMedia:
    """Latents [N, C, T', h, w] and caption ids [N, L] (+ lengths [N]) of a `LatentDataset`, on one device."""

    def __init__(self, latents: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> None:
        if latents.ndim != 5 or ids.ndim != 2 or lengths.shape != (ids.shape[0],) or latents.shape[0] != ids.shape[0]:
            raise ValueError(f"ResidentMedia: expected latents [N, C, T', h, w], ids [N, L], lengths [N]; got "
                             f"{tuple(latents.shape)}, {tuple(ids.shape)}, {tuple(lengths.shape)}")
        self.latents, self.ids, self.lengths = latents, ids, lengths
        self.lengths_host = lengths.cpu()                # to cut a batch's ids to its longest caption on the host

    @classmethod
    def from_latents(cls, data: LatentDataset, tokenizer: Any, seq_len: int, device: torch.device | str,
                     workers: int = 0) -> "ResidentMedia":
        """Move `data`'s latents and its captions (tokenised, cut to `seq_len` tokens as `MediaTask.collate` does;
        `workers` processes write the captions)."""
        frames = set(torch.tensor(data.offsets).diff().tolist())
        if len(frames) != 1:
            raise ValueError(f"resident_data needs items of one latent length, but the cache holds lengths "
                             f"{sorted(frames)}; train this data without resident_data")
        t = frames.pop()
        n = len(data)
        flat = data.latents                                                          # [N * T', C, h, w]
        latents = flat.view(n, t, *flat.shape[1:]).transpose(1, 2)                   # [N, C, T', h, w]
        rows = [ids[:seq_len] for ids in tokenizer.encode_batch(captions(data, workers))]
        packed = PackedText.from_lists(rows, tokenizer.pad_id)
        return cls(latents.contiguous().to(device), packed.ids.to(device), packed.lengths.to(device))

    @property
    def device(self) -> torch.device:
        return self.latents.device

    def __len__(self) -> int:
        return self.latents.shape[0]

    def batch(self, index: torch.Tensor, index_host: torch.Tensor | None = None) -> dict[str, Any]:
        """Items `index` [B] (long, on the device) -> {"latents": [B, C, T', h, w], "captions": PackedText}.

        With `index_host` (the same items, on the host) the ids are cut to the batch's longest caption, as the list
        path pads them: the same sequences, and no compute spent on the cache's longest caption."""
        ids = self.ids[index]
        if index_host is not None:
            ids = ids[:, :max(1, int(self.lengths_host[index_host].max()))]
        return {"latents": self.latents[index], "captions": PackedText(ids, self.lengths[index])}


class _Captions(Dataset):
    def __init__(self, data: LatentDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> str:
        return self.data.caption(i)


def captions(data: LatentDataset, workers: int = 0) -> list[str]:
    """Every item's caption, in order (the world writes a caption from its scene: ~0.2 ms each, so `workers`
    processes share a large cache's)."""
    if workers <= 0:
        return [data.caption(i) for i in range(len(data))]
    loader = DataLoader(_Captions(data), batch_size=1024, num_workers=workers, collate_fn=list)
    return [c for chunk in loader for c in chunk]


class ResidentText:
    """The language-modelling task's batches from the resident captions of every media kind: `<bos> caption <eos>`
    cut to `seq_len` tokens (as `TextTask.collate`), built on the device. Lengths are also kept on the host, so the
    batch's count of predicted tokens (its share of an update) needs no read from the device."""

    def __init__(self, media: list[ResidentMedia], seq_len: int, bos: int, eos: int, pad: int) -> None:
        width = max(m.ids.shape[1] for m in media)
        ids = [torch.nn.functional.pad(m.ids, (0, width - m.ids.shape[1]), value=pad) for m in media]
        self.ids = torch.cat(ids)                                                    # [N, W]
        self.lengths = torch.cat([m.lengths for m in media]).clamp(max=seq_len - 2)  # [N] room for <bos>, <eos>
        self.lengths_host = self.lengths.cpu()
        self.bos, self.eos, self.pad = bos, eos, pad

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, index: torch.Tensor, index_host: torch.Tensor) -> dict[str, Any]:
        """Rows `index` [B] (on the device; the same rows as `index_host` on the host) -> the `TextTask` batch."""
        lengths = self.lengths[index].unsqueeze(1)                                   # [B, 1]
        width = int(self.lengths_host[index_host].max()) + 2
        pos = torch.arange(width, device=self.device).unsqueeze(0)                   # [1, W + 2]
        body = self.ids[index][:, :width - 2]
        body = torch.cat([body.new_full((body.shape[0], 1), self.bos), body, body.new_full((body.shape[0], 1),
                                                                                          self.pad)], 1)
        ids = torch.where(pos <= lengths, body, torch.where(pos == lengths + 1, self.eos, self.pad))
        mask = (pos <= lengths + 1).long()
        predicted = float((self.lengths_host[index_host] + 1).sum())
        return {"input_ids": ids, "attention_mask": mask, "predicted": predicted}


__all__ = ["ResidentMedia", "ResidentText", "captions"]
