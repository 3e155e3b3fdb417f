"""Benchmark of data-parallel scaling: one training step of the backbone on 1 process vs N ranks, same global batch.

Writes JSON rows (stdout, or ``--out FILE``)::

    python benchmarks/scaling.py --preset tiny --world 2 --out runs/bench_scaling.json

Configurations, all on the same global batch (strong scaling) with AdamW:

    single        one process, no distributed code (the baseline)
    fsdp          N ranks, FSDP2 over all of them
    fsdp_ep       N ranks, FSDP2 + expert parallel over all of them (routed experts split N ways)
    fsdp_ep_ac    the same with activation checkpointing

Each rank is a fresh process (torch.multiprocessing, gloo on CPU, NCCL on GPUs), `--threads` intra-op threads each.
Reported per configuration: median / p10 / p90 step time over `--steps` timed steps after `--warmup`, tokens/s
and the speed-up over `single`. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from multimodal.backbone.transformer import Transformer
from multimodal.config import preset
from multimodal.training.distributed import (DistributedContext, ParallelConfig, all_reduce_mean, build_mesh,
                                             clip_grad_norm_, init_distributed, parallelize, shutdown)

CONFIGS = {"fsdp": dict(ep=1), "fsdp_ep": dict(ep=0), "fsdp_ep_ac": dict(ep=0, activation_checkpointing=True)}


def step_times(model: Transformer, ids: torch.Tensor, ctx: DistributedContext, warmup: int, steps: int) -> list[float]:
    """Seconds per optimizer step (forward, backward, clip, AdamW) on this rank's slice `ids`."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = model(ids)
        loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].reshape(-1))
        loss = loss + 0.3 * model.mtp_loss(ids, out.hidden_states)
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0, ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        all_reduce_mean(loss, ctx).item()                 # the logged loss: a sync point, as in training
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def batch(name: str, global_batch: int, seq: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, preset(name).vocab_size, (global_batch, seq), generator=g)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    base = init_distributed(ParallelConfig(timeout_s=120))
    rows = []
    try:
        for name, kw in CONFIGS.items():
            cfg = ParallelConfig(**{**kw, "ep": kw["ep"] or world}, timeout_s=120)
            ctx = dataclasses.replace(base, mesh=build_mesh(world, cfg.ep, base.device.type))
            torch.manual_seed(0)
            model = parallelize(Transformer(preset(args.preset)).to(ctx.device), ctx, cfg)
            ids = batch(args.preset, args.global_batch, args.seq)
            k = args.global_batch // world
            times = step_times(model, ids[rank * k:(rank + 1) * k].to(ctx.device), ctx, args.warmup, args.steps)
            rows.append((name, times))
    finally:
        shutdown(base)
    if rank == 0:
        Path(out).write_text(json.dumps(rows))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def row(name: str, world: int, times: list[float], args: argparse.Namespace, base_ms: float | None) -> dict:
    ms = sorted(t * 1e3 for t in times)
    med = statistics.median(ms)
    tokens = args.global_batch * args.seq
    return {"name": "train_step", "impl": name, "world": world, "preset": args.preset,
            "global_batch": args.global_batch, "seq": args.seq, "threads_per_rank": args.threads,
            "device": args.device_name, "ms_median": round(med, 2), "ms_p10": round(ms[len(ms) // 10], 2),
            "ms_p90": round(ms[min(len(ms) - 1, (len(ms) * 9) // 10)], 2),
            "tokens_per_s": round(tokens / (med / 1e3), 1),
            "speedup_vs_single": round(base_ms / med, 3) if base_ms else 1.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--world", type=int, default=2, help="ranks of the distributed configurations")
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.global_batch % args.world:
        sys.exit(f"--global-batch {args.global_batch} must be a multiple of --world {args.world}")
    args.device_name = f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"

    torch.set_num_threads(args.threads)
    single = init_distributed(ParallelConfig(), env={})
    torch.manual_seed(0)
    model = Transformer(preset(args.preset)).to(single.device)
    base = step_times(model, batch(args.preset, args.global_batch, args.seq).to(single.device), single,
                      args.warmup, args.steps)
    base_ms = statistics.median(base) * 1e3
    rows = [row("single", 1, base, args, None)]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.json")
        mp.start_processes(_worker, args=(args.world, free_port(), args, out), nprocs=args.world,
                           start_method="spawn")
        for name, times in json.loads(Path(out).read_text()):
            rows.append(row(name, args.world, times, args, base_ms))
    text = "\n".join(json.dumps(r) for r in rows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
