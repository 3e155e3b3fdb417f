"""Training throughput of the built-in model's recipes, side by side in one run: samples/s per task, updates/s,
MFU and peak memory.

Usage:
    python benchmarks/training.py --device cuda                       # shapes-demo vs shapes-gpu on a GPU
    python benchmarks/training.py --device cpu --recipes shapes-demo,shapes-demo+resident   # the 2-core CPU
    python benchmarks/training.py --device cpu --tiny                 # seconds: the debug model (a smoke test)

Each recipe is its `TrainConfig` preset (`multimodal/training/config.py`) on the shipped model (`init_from="shapes"`),
with a smaller latent cache (`--cache`) so setting up takes seconds; the model, batch shapes and kernels are the
recipe's. For every task the script times one micro-batch's forward + backward (`--repeats` times after `--warmup`;
samples/s = micro-batch / time), then whole optimizer updates (`Trainer.train_step`: micro-batches of the drawn
tasks, clipping, AdamW, EMA, router biases) for updates/s and samples/s. `--micro-batches` sweeps the micro-batch of
the GPU recipe.

MFU: model FLOPs per sample of each task are counted once by `torch.utils.flop_counter.FlopCounterMode` on the
PyTorch reference ops (the Triton kernels are invisible to it) at a small batch, forward + backward; the achieved
FLOP/s over the GPU's dense bf16 peak (989 TFLOP/s for an H100/H200 SXM, datasheet) is the MFU. On a CPU no MFU is
given. JSON rows go to `benchmarks/results/training_<device>.json` (or `--json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK_TFLOPS = {"cuda": 989.0}


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--recipes", default="shapes-demo,shapes-gpu",
                   help="comma-separated training presets; NAME+resident: the preset with resident_data on")
    p.add_argument("--micro-batches", default="", help="comma-separated micro-batch sizes for the last recipe")
    p.add_argument("--cache", default="4096,1024", help="cached image,video items per recipe (bounds setup time)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="the debug model, small batches (a CPU smoke test)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _sync(device) -> None:
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize(device)


def _time(fn, device, warmup: int, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@contextlib.contextmanager
def _reference_kernels():
    before = os.environ.get("MULTIMODAL_KERNELS")
    os.environ["MULTIMODAL_KERNELS"] = "torch"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MULTIMODAL_KERNELS", None)
        else:
            os.environ["MULTIMODAL_KERNELS"] = before


def _config(name: str, args, device, micro: int | None, out: Path):
    """The recipe `name` (a training preset; `+resident` appended turns resident_data on) at benchmark size."""
    from multimodal.training.config import train_preset
    preset_name, *options = name.split("+")
    cfg = train_preset(preset_name)
    if "resident" in options:
        cfg = cfg.replace(resident_data=True)
    images, videos = (int(x) for x in args.cache.split(","))
    changes = dict(device=str(device), progress=False, eval_every=0, save_every=0, score_samples=0,
                   latent_cache={"image": images, "video": videos}, max_steps=1000, warmup_steps=1,
                   train_samples=max(images, videos, cfg.micro_batch_size))
    if args.tiny:
        changes.update(init_from="", preset="debug", model={}, flow_head={}, vocab_size=300, seq_len=16,
                       micro_batch_size=4, grad_accum=2, data_workers=0)
    if micro:
        changes["micro_batch_size"] = micro
    if device.type == "cpu":
        changes["data_workers"] = 0
    return cfg.replace(**changes)


def _flops_per_sample(trainer, name: str, n: int = 8) -> float | None:
    """Forward + backward FLOPs of one sample of task `name` (reference ops, `n` samples, divided by n)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    batch = trainer.next_batch(name, n)
    with _reference_kernels(), FlopCounterMode(display=False) as counter, trainer._autocast():
        loss, _ = trainer.tasks[name].loss(trainer.model, batch)
        loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    trainer.loads.reset()
    return counter.get_total_flops() / n if counter.get_total_flops() else None


def bench_recipe(name: str, args, device, micro: int | None) -> dict:
    import torch
    from multimodal.training.trainer import Trainer
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(name, args, device, micro, Path(tmp))
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp) / "run", log=lambda s: None)
        setup_s = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row = {"recipe": name, "device": str(device), "micro_batch_size": cfg.micro_batch_size,
               "grad_accum": cfg.grad_accum, "samples_per_update": cfg.batch_size, "resident_data": cfg.resident_data,
               "precision": "bf16" if trainer.amp_dtype is not None else "fp32", "setup_s": round(setup_s, 1),
               "tasks": {}}
        flops_per_update = 0.0
        weights = {n: cfg.tasks[n] for n in trainer.tasks}
        total_w = sum(weights.values())
        for task in sorted(trainer.tasks):
            def step(task=task):
                batch = trainer.next_batch(task, cfg.micro_batch_size)
                with trainer._autocast():
                    loss, _ = trainer.tasks[task].loss(trainer.model, batch)
                loss.backward()
                trainer.loads.reset()
            seconds = _time(step, device, args.warmup, args.repeats)
            trainer.model.zero_grad(set_to_none=True)
            flops = _flops_per_sample(trainer, task)
            entry = {"seconds_per_micro_batch": seconds, "samples_per_s": cfg.micro_batch_size / seconds}
            if flops:
                entry["gflops_per_sample"] = flops / 1e9
                if device.type in PEAK_TFLOPS:
                    entry["mfu"] = flops * entry["samples_per_s"] / (PEAK_TFLOPS[device.type] * 1e12)
                flops_per_update += flops * cfg.batch_size * weights[task] / total_w
            row["tasks"][task] = entry
        seconds = _time(trainer.train_step, device, 1, args.updates)
        row.update(seconds_per_update=seconds, updates_per_s=1.0 / seconds, samples_per_s=cfg.batch_size / seconds)
        if flops_per_update and device.type in PEAK_TFLOPS:
            row["mfu"] = flops_per_update / seconds / (PEAK_TFLOPS[device.type] * 1e12)
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        return row


def main(argv=None) -> list[dict]:
    args = _parse(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/training.py: --device cuda, but CUDA is not available on this machine")
    recipes = [r for r in args.recipes.split(",") if r]
    micros = [int(m) for m in args.micro_batches.split(",") if m]
    plan = [(r, None) for r in recipes] + [(recipes[-1], m) for m in micros]
    rows = []
    for recipe, micro in plan:
        try:
            rows.append(bench_recipe(recipe, args, device, micro))
        except Exception as exc:  # noqa: BLE001 - a failing recipe is a row, the others still run
            rows.append({"recipe": recipe, "micro_batch_size": micro, "device": str(device),
                         "error": f"{type(exc).__name__}: {exc}"[:2000]})
        print(json.dumps(rows[-1]), flush=True)
    _print_table(rows)
    path = Path(args.json or ROOT / "benchmarks" / "results" / f"training_{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else "cpu", "threads": torch.get_num_threads()}
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")
    return rows


def _print_table(rows: list[dict]) -> None:
    base = next((r for r in rows if "samples_per_s" in r), None)
    print(f"\n{'recipe':<14} {'micro':>6} {'upd/s':>7} {'samples/s':>10} {'x base':>7} {'MFU':>6} {'GiB':>6}  per task samples/s")
    for r in rows:
        if "error" in r:
            print(f"{r['recipe']:<14} {str(r.get('micro_batch_size')):>6}  error: {r['error'][:100]}")
            continue
        tasks = ", ".join(f"{k} {v['samples_per_s']:.0f}" for k, v in r["tasks"].items())
        ratio = r["samples_per_s"] / base["samples_per_s"] if base else float("nan")
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "-"
        print(f"{r['recipe']:<14} {r['micro_batch_size']:>6} {r['updates_per_s']:>7.2f} {r['samples_per_s']:>10.0f} "
              f"{ratio:>7.1f} {mfu:>6} {mem:>6}  {tasks}")


if __name__ == "__main__":
    main()
