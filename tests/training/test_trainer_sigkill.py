"""Exact resume after SIGKILL, through the real command: `python -m multimodal train` is killed mid-run, resumed
with the same command line plus --resume, and must log the same loss at every step as a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from multimodal.training.metrics import read_metrics

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8


def _command(config: Path, out: Path, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "multimodal", "train", "--config", str(config), "--out", str(out), "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _train_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"}


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**TINY, "max_steps": STEPS, "save_every": 2, "keep_checkpoints": 2}))

    full = subprocess.run(_command(config, tmp_path / "full"), env=_env(), capture_output=True, text=True,
                          timeout=240)
    assert full.returncode == 0, full.stderr[-2000:]

    victim = subprocess.Popen(_command(config, tmp_path / "cut"), env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    latest = tmp_path / "cut" / "checkpoints" / "latest"
    deadline = time.monotonic() + 200
    while not latest.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)                               # usually lands inside an update, after a few log lines
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    logged = _train_losses(tmp_path / "cut")
    assert 2 <= max(logged) < STEPS                 # killed mid-run, after the first checkpoint

    resumed = subprocess.run(_command(config, tmp_path / "cut", resume=True), env=_env(), capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout and f"stopped at step {STEPS} (max_steps)" in resumed.stdout

    expected, got = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "cut")
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == expected                          # bit-identical on the same machine and thread count
