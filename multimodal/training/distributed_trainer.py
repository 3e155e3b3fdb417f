"""The trainer on N processes: `Trainer` with its construction hooks filled in by the distributed parts.

    torchrun --nproc-per-node 2 -m multimodal train --preset debug --out runs/lm --ep 2

What changes against the one-process `Trainer` (everything else, including the recipe, is the same):

- `wrap_model`: expert parallelism, activation checkpointing and FSDP2 (`distributed.parallelize`).
- Data: `micro_batch_size` stays the *global* micro-batch, so a recipe trains the same model on any number of
  ranks. Every rank advances the same seeded sample streams and keeps its contiguous `1/W` slice of each
  micro-batch (no overlap, nothing skipped); the data position in a checkpoint is therefore world-size free.
- Loss: `ShardedTask` scales each rank's loss so that FSDP's gradient average equals the gradient of the global
  batch's mean loss, even when ranks hold different numbers of tokens; the logged value is the global mean.
- Router balance: the expert loads are summed over ranks before the bias update, so every rank applies the same one.
- Gradient clipping: one global norm over FSDP and expert shards (`distributed.clip_grad_norm_`).
- Checkpoints: `sharded_checkpoint` (DCP) under `out/checkpoints/step_*`, resumable on any number of ranks;
  the final `out/model/` is one consolidated safetensors folder, as the one-process trainer writes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .balance import LoadTracker
from .checkpoint import LATEST, TMP_PREFIX, list_checkpoints, step_dir_name
from .config import TrainConfig
from .distributed import DistributedContext, ParallelConfig, clip_grad_norm_, init_distributed, parallelize
from .sharded_checkpoint import export_consolidated, load_checkpoint, save_checkpoint
from .tasks import TEXT_TASKS
from .trainer import Trainer, TrainResult


class DistributedLoadTracker(LoadTracker):
    """`LoadTracker` whose bias update uses the expert loads summed over all ranks."""

    def __init__(self, model: nn.Module, speed: float, ctx: DistributedContext) -> None:
        super().__init__(model, speed)
        self.ctx = ctx

    def apply(self) -> float | None:
        if self.ctx.is_distributed:
            for load in self.loads:
                if load is not None:                     # the same layers ran on every rank
                    dist.all_reduce(load, op=dist.ReduceOp.SUM)
        return super().apply()


class ShardedTask:
    """A task whose `loss` on this rank's slice contributes its share of the global batch's mean loss.

    A task's loss is a mean over `weight(batch)` elements (tokens or samples). With n_r elements on rank r and
    N = sum n_r, this rank back-propagates W * n_r / N * loss_r; FSDP averages over the W ranks, so the gradient is
    that of sum_r n_r loss_r / N, the global mean. The returned value (for the log and the finiteness check) is the
    global mean itself; `weight` returns N so the trainer's micro-batch shares match the one-process run."""

    def __init__(self, task: Any, ctx: DistributedContext) -> None:
        self.task, self.ctx = task, ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def _sum(self, value: float | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float64, device=self.ctx.device).clone()
        if self.ctx.is_distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def collate(self, items, device: torch.device) -> dict[str, Any]:
        return self.task.collate(items, device)

    def weight(self, batch: dict[str, Any]) -> float:
        return float(self._sum(self.task.weight(batch)))

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats = self.task.loss(model, batch)
        n_local = float(self.task.weight(batch))
        n_total = float(self._sum(n_local))
        if n_total == 0:
            return loss, stats
        scaled = loss * (self.ctx.world_size * n_local / n_total)
        global_mean = (self._sum(loss.detach() * n_local) / n_total).to(loss.dtype)
        stats = dict(stats)
        if "tokens" in stats:
            stats["tokens"] = float(self._sum(stats["tokens"]))
        return scaled + (global_mean - scaled).detach(), stats


class DistributedTrainer(Trainer):
    """`Trainer` over the ranks of `ctx` (joined with `init_distributed` when not given), laid out by `parallel`."""

    def __init__(self, config: TrainConfig, out: str | Path, resume: bool = False,
                 parallel: ParallelConfig | None = None, ctx: DistributedContext | None = None, **kwargs: Any) -> None:
        media = sorted(n for n, weight in config.tasks.items() if weight > 0 and n not in TEXT_TASKS)
        if media:
            raise ValueError(f"distributed training covers the text tasks; the unified model's media tasks {media} "
                             f"run in one process for now (python -m multimodal train without torchrun/--ep)")
        if config.ema_decay > 0:
            raise ValueError(f"ema_decay ({config.ema_decay}) is not supported by distributed training yet (the EMA "
                             f"would need sharding like the weights); set it to 0, or train in one process")
        self.parallel = parallel or ParallelConfig()
        self.ctx = ctx or init_distributed(self.parallel)
        w = self.ctx.world_size
        if config.micro_batch_size % w:
            raise ValueError(f"micro_batch_size ({config.micro_batch_size}) must be a multiple of the number of "
                             f"processes ({w}): it is the global micro-batch, split evenly over the ranks")
        if self.ctx.is_distributed and str(self.ctx.device) != config.device:
            config = config.replace(device=str(self.ctx.device))     # each rank on its own local device
        super().__init__(config, out, resume=resume, **kwargs)
        self.loads = DistributedLoadTracker(self.model, self.loads.speed, self.ctx)

    # -------------------------------------------------------------------------------------------- hooks
    def is_main_process(self) -> bool:
        return self.ctx.is_main

    def wrap_model(self, model: nn.Module) -> nn.Module:
        if self.config.compile:
            raise ValueError(f"compile={self.config.compile}: the distributed trainer does not compile parts of the "
                             f"model yet; leave compile empty (the single-process trainer supports it)")
        if self.config.curriculum:
            raise ValueError("curriculum: the distributed trainer does not narrow its sharded streams by stage yet; "
                             "leave curriculum empty (the single-process trainer supports it)")
        return parallelize(model, self.ctx, self.parallel)

    def build_tasks(self) -> dict[str, Any]:
        return {name: ShardedTask(task, self.ctx) for name, task in super().build_tasks().items()}

    def _items(self, task_name: str, n: int) -> list[Any]:
        """Every rank advances the stream by the global `n`, then keeps its own contiguous slice."""
        items = super()._items(task_name, n)
        k = n // self.ctx.world_size
        return items[self.ctx.rank * k:(self.ctx.rank + 1) * k]

    def _clip_gradients(self) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        return clip_grad_norm_(params, max_norm, self.ctx)

    # ----------------------------------------------------------------------------------- stopping together
    def train(self) -> TrainResult:
        """`Trainer.train`, with `max_time` and stop requests (SIGTERM, Ctrl-C) decided by all ranks together.

        Each rank sees its own clock and its own signals; if one rank stopped a step earlier than another, the two
        would wait in different collectives. So the limit is checked after every update and the flags of all ranks
        are combined (any rank out of time or asked to stop -> every rank stops after the same update)."""
        max_time = self.config.max_time
        self._deadline = time.perf_counter() + max_time if max_time else None
        self._timed_out = False
        self.config = self.config.replace(max_time=0.0)           # the base loop's own (per-rank) check is off
        try:
            result = super().train()
        finally:
            self.config = self.config.replace(max_time=max_time)
        if self._timed_out and result.stop_reason == "stop_requested":
            result.stop_reason = "max_time"
        return result

    @property
    def stop_requested(self) -> bool:
        """What the training loop reads: the stop decision all ranks agreed on after the last update."""
        return getattr(self, "_stop_agreed", False)

    @stop_requested.setter
    def stop_requested(self, value: bool) -> None:
        """What a signal handler sets: this rank's wish, shared with the others after the current update."""
        self._stop_wish = bool(value)
        if not value:
            self._stop_agreed = False

    def train_step(self) -> dict[str, Any]:
        record = super().train_step()
        deadline = getattr(self, "_deadline", None)
        flags = torch.tensor([float(getattr(self, "_stop_wish", False)),
                              float(deadline is not None and time.perf_counter() >= deadline)], device=self.ctx.device)
        if self.ctx.is_distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[1] > 0:
            self._timed_out = True
        self._stop_agreed = bool(flags.max() > 0)
        return record

    # -------------------------------------------------------------------------------------- checkpoints
    def save(self) -> Path | None:
        """A DCP checkpoint of the current step (collective: every rank writes its shards); returns it on rank 0."""
        root = self.out / "checkpoints"
        state = {"step": self.step, "schedule": self.schedule.state_dict(),
                 "data": {name: s.state_dict() for name, s in self.streams.items()},
                 "config": self.config.to_dict(), "train_seconds": self.train_seconds,
                 "cpu_seconds": self.cpu_seconds}
        path = save_checkpoint(root / step_dir_name(self.step), self.model, self.optimizer, self.ctx, state)
        if self.is_main_process():
            pointer = root / f"{TMP_PREFIX}{LATEST}"
            pointer.write_text(path.name + "\n")
            pointer.replace(root / LATEST)
            for old in list_checkpoints(root)[:-self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self._last_saved = self.step
        return path if self.is_main_process() else None

    def _load(self, path: Path) -> None:
        if not (path / ".metadata").exists():
            raise ValueError(f"{path} was written by a one-process run (model.safetensors, not a distributed "
                             f"checkpoint); resume it with `python -m multimodal train --resume`")
        state = load_checkpoint(path, self.model, self.optimizer, self.ctx)
        self.schedule.load_state_dict(state["schedule"])
        for name, stream in self.streams.items():
            stream.load_state_dict(state["data"][name])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.cpu_seconds = float(state.get("cpu_seconds", 0.0))
        if self.is_main_process():
            dropped = self.metrics.truncate_after(self.step)
            self.log(f"resumed from {path} at step {self.step} (saved on {state.get('world_size', '?')} ranks, "
                     f"now {self.ctx.world_size})" + (f"; dropped {dropped} log lines written after it" if dropped
                                                        else ""))

    def export(self) -> Path | None:
        """Consolidated `out/model/` (config.json + safetensors + tokenizer.json) for the pipelines; collective."""
        target = export_consolidated(self.model, self.out / "model", self.ctx)
        if target is not None:
            self.tokenizer.save(target / "tokenizer.json")
        return target


def wants_distributed(env: dict[str, str], parallel: ParallelConfig, out: str | Path, resume: bool) -> bool:
    """Use `DistributedTrainer` under a launcher (WORLD_SIZE > 1), for expert parallelism, or to resume a run whose
    newest checkpoint is a DCP one (so a distributed run can continue in one process)."""
    if int(env.get("WORLD_SIZE", "1")) > 1 or parallel.ep > 1 or parallel.activation_checkpointing:
        return True
    if resume:
        found = list_checkpoints(Path(out) / "checkpoints")
        return bool(found) and (found[-1] / ".metadata").exists()
    return False
