"""The task mix: which task each micro-batch trains, where its samples come from, and how its loss is computed.

- `TaskMix` draws the task of micro-batch `m` of update `s` from `numpy.random.default_rng([seed, s, m])`, with
  probabilities proportional to the configured weights. The draw is a pure function of (seed, s, m): it needs
  no checkpoint state, and a resumed run draws exactly the tasks the uninterrupted run would have.
- `SampleStream` walks a dataset in a seeded permutation, epoch after epoch. Its position (epoch, offset) is the
  "data position" stored in checkpoints; each task owns one stream, so tasks do not shift each other's data.
- A task turns dataset items into a batch (`collate`) and a batch into a scalar loss (`loss`). `TextTask` is
  language modelling on captions: next-token cross-entropy plus the backbone's multi-token-prediction loss.

Tasks are looked up by name in `TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset


class TaskMix:
    """Seeded choice of one task per micro-batch, proportional to `weights` (tasks with weight 0 never run)."""

    def __init__(self, weights: dict[str, float], seed: int) -> None:
        if not weights or sum(weights.values()) <= 0 or any(w < 0 for w in weights.values()):
            raise ValueError(f"task weights must be >= 0 and not all 0, got {weights}")
        self.names = [n for n, w in weights.items() if w > 0]
        total = sum(weights[n] for n in self.names)
        self.probs = np.array([weights[n] / total for n in self.names])
        self.cumulative = np.cumsum(self.probs)
        self.seed = seed

    def choose(self, step: int, micro: int) -> str:
        """The task of micro-batch `micro` of optimizer update `step`."""
        u = np.random.default_rng([self.seed, step, micro]).random()
        return self.names[min(int(np.searchsorted(self.cumulative, u, side="right")), len(self.names) - 1)]


class SampleStream:
    """Indices into a dataset of `length` items: a seeded permutation per epoch, read front to back.

    State (`state_dict`) is `{"epoch", "offset"}`: the next index is `permutation(epoch)[offset]`. With `subset` (a
    1-D long tensor of dataset indices, e.g. a curriculum stage's items) the stream permutes those instead of
    `range(length)`, and `length` must equal their number."""

    def __init__(self, length: int, seed: int, shuffle: bool = True, subset: torch.Tensor | None = None) -> None:
        if length <= 0:
            raise ValueError(f"a sample stream needs a non-empty dataset, got length {length}")
        if subset is not None and subset.shape != (length,):
            raise ValueError(f"a sample stream's subset must hold `length` ({length}) indices, got {tuple(subset.shape)}")
        self.length, self.seed, self.shuffle, self.subset = length, seed, shuffle, subset
        self.epoch, self.offset = 0, 0
        self._order: torch.Tensor | None = None
        self._device_order: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        if self._order is None:
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                self._order = torch.randperm(self.length, generator=gen)
            else:
                self._order = torch.arange(self.length)
            if self.subset is not None:
                self._order = self.subset[self._order]
        return self._order

    def take(self, n: int) -> list[int]:
        """The next `n` indices (wrapping into the next epoch as needed)."""
        out: list[int] = []
        while len(out) < n:
            order = self._permutation()
            k = min(n - len(out), self.length - self.offset)
            out += order[self.offset:self.offset + k].tolist()
            self.offset += k
            if self.offset == self.length:
                self.epoch, self.offset, self._order, self._device_order = self.epoch + 1, 0, None, None
        return out

    def take_tensor(self, n: int, device: torch.device | str) -> torch.Tensor:
        """The next `n` indices as a long tensor on `device`: the same indices as `take(n)`, sliced from a copy of
        the epoch's permutation kept on the device (one host-to-device copy per epoch, none per batch)."""
        return self.take_both(n, device)[1]

    def take_both(self, n: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `n` indices on the host and on `device` (`take_tensor`), as two long tensors."""
        parts: list[torch.Tensor] = []
        host: list[torch.Tensor] = []
        remaining = n
        while remaining > 0:
            order = self._permutation()
            if self._device_order is None or self._device_order.device != torch.device(device):
                self._device_order = order.to(device)
            k = min(remaining, self.length - self.offset)
            parts.append(self._device_order[self.offset:self.offset + k])
            host.append(order[self.offset:self.offset + k])
            self.offset += k
            remaining -= k
            if self.offset == self.length:
                self.epoch, self.offset, self._order, self._device_order = self.epoch + 1, 0, None, None
        if len(parts) == 1:
            return host[0], parts[0]
        return torch.cat(host), torch.cat(parts)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "length": self.length}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("length", self.length) != self.length:
            raise ValueError(f"data stream length changed since the checkpoint: {state['length']} -> {self.length}")
        self.epoch, self.offset, self._order = int(state["epoch"]), int(state["offset"]), None
        self._device_order = None


def caption_of(dataset: Dataset, index: int) -> str:
    """The caption of item `index` without decoding its pixels (world samples, user pairs, subsets of either)."""
    if isinstance(dataset, Subset):
        return caption_of(dataset.dataset, int(dataset.indices[index]))
    if hasattr(dataset, "caption"):
        return dataset.caption(index)
    if hasattr(dataset, "sample"):
        return dataset.sample(index).caption
    return dataset[index]["caption"]


def backbone_of(model: nn.Module) -> nn.Module:
    """The `Transformer` inside a (possibly wrapped or unified) model: the module with `mtp_loss`."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "backbone", None)):
        if candidate is not None and hasattr(candidate, "mtp_loss"):
            return candidate
    raise TypeError(f"{type(model).__name__} has no backbone with an LM head (mtp_loss)")


class Task(Protocol):
    """One training task: `needs_pixels` says whether `collate` needs decoded media or only captions; `data_kind`
    which items its stream serves ("mixed", "image" or "video")."""

    name: str
    needs_pixels: bool
    data_kind: str

    def collate(self, items: Sequence[Any], device: torch.device) -> dict[str, Any]: ...

    def weight(self, batch: dict[str, Any]) -> float:
        """How many loss elements the batch's mean loss averages over (its share of a gradient-accumulated update)."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class TextTask:
    """Language modelling on captions: `<bos> caption <eos>` padded to a rectangle, at most `seq_len` tokens.

    loss = CE(next token) + mtp_weight * MTP loss (mean over MTP depths); padding is ignored by both."""

    tokenizer: Any
    seq_len: int
    mtp_weight: float = 0.3
    name: str = "text"
    needs_pixels: bool = False
    data_kind: str = "mixed"                 # captions of images and videos alike

    def collate(self, items: Sequence[Any], device: torch.device) -> dict[str, Any]:
        captions = [item if isinstance(item, str) else item["caption"] for item in items]
        enc = self.tokenizer(captions, add_bos=True, add_eos=True, max_length=self.seq_len)
        predicted = float(enc["attention_mask"][:, 1:].sum())          # counted on the host, before the copy
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
                "predicted": predicted}

    def weight(self, batch: dict[str, Any]) -> float:
        """Predicted tokens: every token after the first that is not padding."""
        return batch["predicted"]

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        backbone = backbone_of(model)
        if hasattr(model, "embed_text"):              # the unified model: text embeddings carry the TEXT modality
            out = backbone(inputs_embeds=model.embed_text(ids), attention_mask=mask, routing_ids=ids)
        else:
            out = model(ids, attention_mask=mask) if backbone is model else backbone(ids, attention_mask=mask)
        target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)                   # [B, S-1]
        lm = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), target.reshape(-1), ignore_index=-100)
        total = lm
        stats: dict[str, Any] = {"lm": lm.detach()}             # tensors: the trainer reads them once per update
        if self.mtp_weight > 0 and len(backbone.mtp):
            mtp = backbone.mtp_loss(ids, out.hidden_states, attention_mask=mask)
            total = total + self.mtp_weight * mtp
            stats["mtp"] = mtp.detach()
        stats["tokens"] = batch.get("predicted", mask[:, 1:].sum())
        return total, stats


TEXT_TASKS = ("text",)
