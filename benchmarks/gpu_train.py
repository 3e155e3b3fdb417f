"""The training stage of `benchmarks/gpu_pass.sh`: train a recipe for the time left, then bring the model back in parts.

    python benchmarks/gpu_train.py --out "$OUT" --budget 240            # shapes-gpu on CUDA, 240 s in all
    python benchmarks/gpu_train.py --out /tmp/o --budget 30 --dry-run   # the debug model on the CPU

1. Build the `--preset` run (default `shapes-gpu`: the shipped weights, resident latents, 4096 samples per update).
2. Time `--warmup` updates (they count as training: the schedule starts at step 0), then set `max_steps` so that the
   cosine schedule ends inside the budget left, with `max_time` as a backstop.
3. Train; export the pipeline with the EMA weights; cast the model to bf16 as the package ships it
   (`cast_keeping_fp32`); pack the pipeline folder into one tar cut into parts of at most `--part-mib` MiB under
   `--out`, with `pipeline.manifest.json` (SHA-256 of the whole and of each part). `benchmarks/gpu_join.py` joins them.
4. `metrics.jsonl` goes to `--out`; the run's summary (setup time, seconds per update, steps, samples seen) is
   printed and kept in the manifest under "summary" (the pass may bring back only 8 files).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder the results are written to ($OUT)")
    p.add_argument("--budget", type=float, required=True, help="seconds for the whole stage, setup and export included")
    p.add_argument("--preset", default="shapes-gpu")
    p.add_argument("--run-dir", default="runs/gpu-pass")
    p.add_argument("--device", default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--export-margin", type=float, default=45.0, help="seconds kept for evaluation and export")
    p.add_argument("--part-mib", type=float, default=15.0)
    p.add_argument("--dry-run", action="store_true", help="the debug model on the CPU, small caches")
    return p.parse_args(argv)


def pack(folder: Path, out: Path, part_bytes: int, name: str = "pipeline") -> dict:
    """`folder` as `<name>.tar.partNN` files of at most `part_bytes` bytes in `out`, plus `<name>.manifest.json`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=name)
    data = buffer.getvalue()
    parts = []
    for i, start in enumerate(range(0, len(data), part_bytes)):
        chunk = data[start:start + part_bytes]
        path = out / f"{name}.tar.part{i:02d}"
        path.write_bytes(chunk)
        parts.append({"file": path.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "parts": parts}
    (out / f"{name}.manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> dict:
    args = _parse(argv)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    from multimodal.pipelines.base import cast_keeping_fp32
    from multimodal.training.config import train_preset
    from multimodal.training.trainer import Trainer

    device = args.device or ("cpu" if args.dry_run else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_train: --device cuda, but CUDA is not available on this machine")
    cfg = train_preset(args.preset).replace(device=device, progress=False)
    if args.dry_run:
        cfg = cfg.replace(init_from="", preset="debug", model={}, flow_head={}, vocab_size=300, seq_len=16,
                          micro_batch_size=4, grad_accum=2, data_workers=2, train_samples=64,
                          latent_cache={"image": 64, "video": 16}, warmup_steps=1, log_every=1)
    run = Path(args.run_dir)
    if run.exists():
        shutil.rmtree(run)
    trainer = Trainer(cfg, run, log=lambda s: print(s, flush=True))
    setup_s = time.perf_counter() - start
    print(f"setup {setup_s:.1f} s: {trainer.describe()}", flush=True)
    times = []
    for _ in range(args.warmup):
        t0 = time.perf_counter()
        record = trainer.train_step()
        times.append(time.perf_counter() - t0)
        trainer.metrics.write({**record, "steps_per_s": 1.0 / times[-1], "elapsed_s": sum(times)})
    trainer.train_seconds = sum(times)
    per_update = min(times[1:] or times)
    left = args.budget - (time.perf_counter() - start) - args.export_margin
    steps = trainer.step + max(1, int(0.92 * left / per_update))
    trainer.config = trainer.config.replace(max_steps=max(steps, cfg.warmup_steps), max_time=max(left, 1.0))
    trainer.schedule.total_steps = trainer.config.max_steps
    print(f"{per_update:.3f} s per update after warm-up ({times}); training to step {trainer.config.max_steps} "
          f"in at most {left:.0f} s", flush=True)
    result = trainer.train()
    train_s = trainer.train_seconds
    pipeline_dir = run / "pipeline"
    if not (pipeline_dir / "model_index.json").is_file():
        trainer.export()
    from multimodal.pipelines import TextToImagePipeline
    pipe = TextToImagePipeline.from_pretrained(pipeline_dir)
    cast_keeping_fp32(pipe.model, torch.bfloat16)          # as the package ships it: the model only
    shipped = run / "pipeline-bf16"
    pipe.save_pretrained(shipped)
    manifest = pack(shipped, out, int(args.part_mib * 2 ** 20))
    shutil.copy(run / "metrics.jsonl", out / "metrics.jsonl")
    summary = {"preset": args.preset, "device": device, "setup_s": setup_s, "seconds_per_update": per_update,
               "steps": result.step, "stop_reason": result.stop_reason, "train_seconds": train_s,
               "samples_seen": result.step * cfg.batch_size, "samples_per_s": result.step * cfg.batch_size / train_s,
               "final_loss": result.loss, "eval": result.eval, "pipeline_bytes": manifest["bytes"],
               "parts": [p["file"] for p in manifest["parts"]], "total_s": time.perf_counter() - start}
    manifest_path = out / "pipeline.manifest.json"
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
