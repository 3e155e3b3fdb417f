"""`benchmarks/gpu_pass.sh`, the one prepared call on a lent GPU: its dry run (every stage at toy sizes on the CPU)
writes every result file, the pipeline comes back in checked parts that join into a loadable pipeline, and the pass
refuses to start without $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PASS = ROOT / "benchmarks" / "gpu_pass.sh"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET", "MULTIMODAL_KERNELS")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"      # `python` is this interpreter
    env.update(extra)
    return env


def test_pass_refuses_without_out():
    proc = subprocess.run(["bash", str(PASS), "--dry-run"], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "$OUT is unset" in proc.stderr


def test_dry_run_writes_every_result_and_the_parts_join(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(PASS), "--dry-run", "--budget", "110"], env=_env(OUT=str(out)),
                          capture_output=True, text=True, timeout=300)
    log = (out / "log.txt").read_text()
    assert proc.returncode == 0, log[-3000:]
    for stage in ("kernel tests", "kernel_ops", "training throughput", "train"):
        assert f"== {stage} rc=0" in log, log[-3000:]
    names = {p.name for p in out.iterdir()}
    assert {"log.txt", "kernel_ops.json", "training.json", "metrics.jsonl", "pipeline.manifest.json"} <= names
    assert len(names) <= 8                                              # what the device tool brings back
    assert all(p.stat().st_size <= 15 * 2 ** 20 for p in out.iterdir())
    rows = json.loads((out / "training.json").read_text())["rows"]
    assert rows and "error" not in rows[0] and rows[0]["samples_per_s"] > 0
    manifest = json.loads((out / "pipeline.manifest.json").read_text())
    assert manifest["summary"]["steps"] >= 2 and manifest["summary"]["stop_reason"] in ("max_steps", "max_time")

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_join import join
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    folder = join(out, tmp_path / "joined")
    shipped = tmp_path / "gpu-pass-run" / "pipeline-bf16"                # what the training stage saved
    files = sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert all((shipped / f).read_bytes() == (folder / f).read_bytes() for f in files)
    from multimodal.pipelines import TextToImagePipeline
    TextToImagePipeline.from_pretrained(folder)                         # it loads

    part = out / manifest["parts"][0]["file"]                          # a damaged part is named, nothing unpacked
    damaged = bytearray(part.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    part.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=part.name):
        join(out, tmp_path / "again")
    assert not (tmp_path / "again").exists()
