"""Training throughput of the built-in model's recipes, side by side in one run: samples/s per task, updates/s,
MFU and peak memory.

Usage:
    python benchmarks/training.py --device cuda                       # shapes-demo vs shapes-gpu on a GPU
    python benchmarks/training.py --device cpu --recipes shapes-demo,shapes-demo+resident   # the 2-core CPU
    python benchmarks/training.py --device cpu --tiny                 # seconds: the debug model (a smoke test)

Each recipe is its `TrainConfig` preset (`multimodal/training/config.py`) on the shipped model (`init_from="shapes"`),
with a smaller latent cache (`--cache`) so setting up takes seconds; the model, batch shapes and kernels are the
recipe's. All recipes are built first; then for every task the script times one micro-batch's forward + backward
(`--repeats` times after `--warmup`; samples/s = micro-batch / median time), then whole optimizer updates
(`Trainer.train_step`: micro-batches of the drawn tasks, clipping, AdamW, EMA, router biases) for updates/s and
samples/s, round-robin over the recipes within each repeat, so that drift and background load fall on all alike.
`--micro-batches` adds the last recipe at other micro-batch sizes. Options appended to a preset's name with `+`:
`resident` (resident_data on), `patch2` (both flow heads at patch size 2: a quarter of the head tokens; the heads
start from random weights, since the shipped ones are patch size 1, which changes no shape or time), `fp32` / `bf16`
(that precision instead of the preset's), `compile` (the flow heads under `torch.compile` in the training step,
`TrainConfig.compile=["heads"]`) and `compileall` (the heads and every backbone block). A compiling recipe's row has
`first_call_s` per task (the first micro-batch, which compiles) and `compile_failed` (empty unless it fell back to
eager). `--graph-breaks` adds, for the first recipe, Dynamo's graphs and graph breaks of each task's whole loss
(backbone, routing, heads) with their reasons (`torch._dynamo.explain`, nothing compiled).

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
                   help="comma-separated training presets, each with +options: resident, patch2, fp32, bf16 "
                        "(see the module docstring)")
    p.add_argument("--micro-batches", default="", help="comma-separated micro-batch sizes for the last recipe")
    p.add_argument("--cache", default="4096,1024", help="cached image,video items per recipe (bounds setup time)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--updates", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="the debug model, small batches (a CPU smoke test)")
    p.add_argument("--graph-breaks", action="store_true",
                   help="count Dynamo's graph breaks in each task's loss for the first recipe")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _sync(device) -> None:
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize(device)


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
    """The recipe `name` (a training preset, with `+options`: see the module docstring) at benchmark size."""
    from multimodal.training.config import train_preset
    preset_name, *options = name.split("+")
    cfg = train_preset(preset_name)
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
    cfg = cfg.replace(**changes)
    unknown = set(options) - {"resident", "patch2", "fp32", "bf16", "compile", "compileall"}
    if unknown:
        raise ValueError(f"recipe {name!r}: unknown option(s) {sorted(unknown)}; use resident, patch2, fp32, bf16, "
                         f"compile, compileall")
    if "compile" in options or "compileall" in options:
        cfg = cfg.replace(compile=["heads", "backbone"] if "compileall" in options else ["heads"])
    if "resident" in options:
        cfg = cfg.replace(resident_data=True)
    if "patch2" in options:
        heads = {kind: {**cfg.flow_head.get(kind, {}), "patch_size": 2} for kind in ("image", "video")}
        cfg = cfg.replace(flow_head=heads, init_from="")
    for precision in ("fp32", "bf16"):
        if precision in options:
            cfg = cfg.replace(precision=precision)
    return cfg


def _eager(trainer):
    """A context in which a compiling recipe's parts run their original forward (counting and tracing tools)."""
    return trainer.compiled.suspended() if trainer.compiled is not None else contextlib.nullcontext()


def _flops_per_sample(trainer, name: str, n: int = 8) -> float | None:
    """Forward + backward FLOPs of one sample of task `name` (reference ops, `n` samples, divided by n)."""
    from torch.utils.flop_counter import FlopCounterMode
    batch = trainer.next_batch(name, n)
    with _eager(trainer), _reference_kernels(), FlopCounterMode(display=False) as counter, trainer._autocast():
        loss, _ = trainer.tasks[name].loss(trainer.model, batch)
        loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    trainer.loads.reset()
    flops = counter.get_total_flops()
    return flops / n if flops else None


class _Recipe:
    """One recipe's trainer at benchmark size, and its row of results."""

    def __init__(self, name: str, args, device, micro: int | None, root: Path) -> None:
        from multimodal.training.trainer import Trainer
        self.cfg = _config(name, args, device, micro, root)
        t0 = time.perf_counter()
        self.trainer = Trainer(self.cfg, root / "run", log=lambda s: None)
        self.device = device
        self.peak = 0
        cfg, trainer = self.cfg, self.trainer
        self.row = {"recipe": name, "device": str(device), "micro_batch_size": cfg.micro_batch_size,
                    "grad_accum": cfg.grad_accum, "samples_per_update": cfg.batch_size,
                    "resident_data": cfg.resident_data, "compile": list(cfg.compile),
                    "precision": "bf16" if trainer.amp_dtype is not None else "fp32",
                    "setup_s": round(time.perf_counter() - t0, 1), "tasks": {}}

    def micro_step(self, task: str) -> None:
        """Forward + backward of one micro-batch of `task` (gradients dropped)."""
        trainer = self.trainer
        batch = trainer.next_batch(task, self.cfg.micro_batch_size)
        with trainer._autocast():
            loss, _ = trainer.tasks[task].loss(trainer.model, batch)
        loss.backward()
        trainer.model.zero_grad(set_to_none=True)
        trainer.loads.reset()

    def timed(self, fn) -> float:
        """Seconds of one call of `fn` (synchronised on CUDA); tracks this recipe's peak memory."""
        import torch
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        _sync(self.device)
        t0 = time.perf_counter()
        fn()
        _sync(self.device)
        seconds = time.perf_counter() - t0
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device))
        return seconds


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def bench(recipes: list[_Recipe], args) -> None:
    """Time every recipe's tasks and updates round-robin (recipe after recipe within each repeat), so the machine's
    drift and background load fall on all of them alike; fill each recipe's row."""
    tasks = sorted({t for r in recipes for t in r.trainer.tasks})
    for task in tasks:
        having = [r for r in recipes if task in r.trainer.tasks]
        times: dict[int, list[float]] = {id(r): [] for r in having}
        firsts = {}
        for rep in range(args.warmup + args.repeats):
            for r in having:
                seconds = r.timed(lambda r=r: r.micro_step(task))
                if rep == 0:
                    firsts[id(r)] = seconds
                elif rep >= args.warmup:
                    times[id(r)].append(seconds)
        for r in having:
            seconds = _median(times[id(r)])
            entry = {"seconds_per_micro_batch": seconds, "samples_per_s": r.cfg.micro_batch_size / seconds,
                     "first_call_s": firsts[id(r)]}
            flops = _flops_per_sample(r.trainer, task)
            if flops:
                entry["gflops_per_sample"] = flops / 1e9
                if r.device.type in PEAK_TFLOPS:
                    entry["mfu"] = flops * entry["samples_per_s"] / (PEAK_TFLOPS[r.device.type] * 1e12)
            r.row["tasks"][task] = entry
    updates: dict[int, list[float]] = {id(r): [] for r in recipes}
    for rep in range(1 + args.updates):
        for r in recipes:
            seconds = r.timed(r.trainer.train_step)
            if rep >= 1:
                updates[id(r)].append(seconds)
    for r in recipes:
        seconds = _median(updates[id(r)])
        r.row.update(seconds_per_update=seconds, updates_per_s=1.0 / seconds,
                     samples_per_s=r.cfg.batch_size / seconds)
        weights = {n: r.cfg.tasks[n] for n in r.trainer.tasks}
        flops = sum(r.row["tasks"][n].get("gflops_per_sample", 0.0) * 1e9 * w for n, w in weights.items())
        flops_per_update = flops / sum(weights.values()) * r.cfg.batch_size
        if flops_per_update and r.device.type in PEAK_TFLOPS:
            r.row["mfu"] = flops_per_update / seconds / (PEAK_TFLOPS[r.device.type] * 1e12)
        if r.device.type == "cuda":
            r.row["peak_memory_gib"] = r.peak / 2 ** 30
        if r.cfg.compile:
            r.row["compile_failed"] = r.trainer.compiled.failed
    if args.graph_breaks:
        recipes[0].row["graph_breaks"] = {task: _graph_breaks(recipes[0], task) for task in tasks
                                          if task in recipes[0].trainer.tasks}


def _graph_breaks(recipe: _Recipe, task: str) -> dict:
    """Dynamo's graphs / breaks / reasons of one micro-batch's loss of `task` (traced only; compiled parts of a
    compiling recipe are traced through their original forward)."""
    from multimodal.training.compile import graph_breaks
    trainer = recipe.trainer
    batch = trainer.next_batch(task, recipe.cfg.micro_batch_size)
    with _eager(trainer), trainer._autocast():
        found = graph_breaks(lambda: trainer.tasks[task].loss(trainer.model, batch)[0])
    trainer.model.zero_grad(set_to_none=True)
    trainer.loads.reset()
    return found


def main(argv=None) -> list[dict]:
    args = _parse(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/training.py: --device cuda, but CUDA is not available on this machine")
    names = [r for r in args.recipes.split(",") if r]
    micros = [int(m) for m in args.micro_batches.split(",") if m]
    plan = [(r, None) for r in names] + [(names[-1], m) for m in micros]
    rows, recipes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, micro) in enumerate(plan):
            try:
                recipes.append(_Recipe(name, args, device, micro, Path(tmp) / str(i)))
                rows.append(recipes[-1].row)
            except Exception as exc:  # noqa: BLE001 - a recipe that cannot start is a row; the others still run
                rows.append({"recipe": name, "micro_batch_size": micro, "device": str(device),
                             "error": f"{type(exc).__name__}: {exc}"[:2000]})
        if recipes:
            try:
                bench(recipes, args)
            except Exception as exc:  # noqa: BLE001 - keep what was measured, say what broke
                for r in recipes:
                    r.row.setdefault("error", f"{type(exc).__name__}: {exc}"[:2000])
    for row in rows:
        print(json.dumps(row), flush=True)
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
    for r in rows:
        if r.get("compile") and "tasks" in r:
            firsts = ", ".join(f"{k} {v['first_call_s']:.1f} s" for k, v in r["tasks"].items())
            print(f"{r['recipe']}: first (compiling) micro-batch: {firsts}; fell back to eager: "
                  f"{r.get('compile_failed') or 'no'}")
        for task, found in r.get("graph_breaks", {}).items():
            print(f"{r['recipe']} {task}: {found['graphs']} graphs, {found['graph_breaks']} graph breaks"
                  + (": " + "; ".join(found["reasons"][:3]) if found["reasons"] else ""))


if __name__ == "__main__":
    main()
