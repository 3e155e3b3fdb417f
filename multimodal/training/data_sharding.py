"""Per-rank sampling of a map-style dataset: disjoint slices of every global batch, resumable at the exact sample.

The sample order of epoch e is a fixed function of (seed, e): a `torch.randperm` with a generator seeded by
`seed + e` (or 0..N-1 without shuffling). Epoch e is cut into `N // global_batch_size` global batches (the remainder
is skipped, so every rank gets full batches and no sample is seen twice in an epoch). Rank r of W takes the r-th
contiguous slice of `global_batch_size / W` samples of each global batch, so the W ranks together read exactly the
global batch one process would read, in the same order.

The resume position is one number, the count of global samples already consumed (`samples_seen`). It does not
depend on the world size, so a run saved on N ranks resumes on M ranks at the next unseen sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler


class ShardedSampler(Sampler[int]):
    """Indices of this rank's share of each global batch, starting at the resume position.

    num_samples         dataset length N
    global_batch_size   samples per optimizer step over all ranks (must be a multiple of world_size)
    rank, world_size    this process's place in the data-parallel group
    seed, shuffle       the per-epoch order (see module docstring)

    Two ways to read it: `local_batches()` yields one list of indices per step forever (across epochs) and advances
    the position itself; iterating the sampler yields the rest of the current epoch's indices for this rank (for a
    `DataLoader(batch_size=local_batch_size)`), and the caller calls `advance()` once per optimizer step.
    """

    def __init__(self, num_samples: int, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if global_batch_size < 1 or global_batch_size % world_size:
            raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the world size "
                             f"{world_size} (every rank reads the same number of samples per step)")
        if num_samples < global_batch_size:
            raise ValueError(f"the dataset has {num_samples} samples, fewer than one global batch "
                             f"({global_batch_size})")
        self.num_samples, self.global_batch_size = num_samples, global_batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.samples_seen = 0

    # ------------------------------------------------------------------------------------------------- geometry
    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch_size

    @property
    def epoch_samples(self) -> int:
        return self.steps_per_epoch * self.global_batch_size

    @property
    def epoch(self) -> int:
        return self.samples_seen // self.epoch_samples

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The global sample order of one epoch [N] (long)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def global_batch(self, step: int) -> list[int]:
        """The indices of global batch number `step` (counted from the start of training), all ranks together."""
        epoch, offset = divmod(step * self.global_batch_size, self.epoch_samples)
        return self.epoch_order(epoch)[offset:offset + self.global_batch_size].tolist()

    def _local_slice(self, batch: list[int]) -> list[int]:
        lb = self.local_batch_size
        return batch[self.rank * lb:(self.rank + 1) * lb]

    # ----------------------------------------------------------------------------------------------- iteration
    def local_batches(self) -> Iterator[list[int]]:
        """This rank's indices for each step, from the resume position on, forever; advances `samples_seen`."""
        while True:
            epoch, offset = divmod(self.samples_seen, self.epoch_samples)
            order = self.epoch_order(epoch)
            batch = order[offset:offset + self.global_batch_size].tolist()
            if len(batch) < self.global_batch_size:               # resumed with a different global batch size
                self.samples_seen = (epoch + 1) * self.epoch_samples
                continue
            self.samples_seen += self.global_batch_size
            yield self._local_slice(batch)

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.samples_seen, self.epoch_samples)
        order = self.epoch_order(epoch)[:self.epoch_samples].tolist()
        for start in range(offset, self.epoch_samples - self.global_batch_size + 1, self.global_batch_size):
            yield from self._local_slice(order[start:start + self.global_batch_size])

    def __len__(self) -> int:
        offset = self.samples_seen % self.epoch_samples
        return (self.epoch_samples - offset) // self.global_batch_size * self.local_batch_size

    def advance(self, steps: int = 1) -> None:
        """Record `steps` optimizer steps as done (when reading through `__iter__`)."""
        self.samples_seen += steps * self.global_batch_size

    # ------------------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready resume state; independent of rank and world size."""
        return {"samples_seen": self.samples_seen, "seed": self.seed, "shuffle": self.shuffle,
                "num_samples": self.num_samples, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state['samples_seen']`. The dataset length, seed and shuffling must match: otherwise the sample
        order differs and the resumed run would repeat or skip samples, so that is an error."""
        for key in ("num_samples", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"cannot resume the data order: checkpoint has {key}={state[key]!r}, this run "
                                 f"{key}={getattr(self, key)!r}")
        seen = int(state["samples_seen"])
        if seen < 0:
            raise ValueError(f"samples_seen must be >= 0, got {seen}")
        self.samples_seen = seen
