"""`torchrun --nproc-per-node 2 -m multimodal train --ep 2` end to end, then the run resumed in one process.

The 2-rank run (FSDP2 + expert parallel) checkpoints at step 2 and finishes at step 4 with a consolidated model.
Its step-4 checkpoint is then removed and `python -m multimodal train --resume` continues from the 2-rank step-2
checkpoint in a single process: steps 3 and 4 must log the losses the 2-rank run logged.

Tolerance 5e-4 (losses ~7.7): the text task's loss is next-token CE plus 0.3 x MTP loss, two means over slightly
different token counts; ranks are weighted by their CE token count, which is exact for the CE term and off by
O(1e-5) for the MTP term when the ranks' captions have different padding. The strict fp32 equivalence of the
distributed step itself is `test_distributed_training.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from multimodal.convert.checkpoint import load_pretrained

from .distributed_cases import free_port

REPO = Path(__file__).resolve().parents[2]
RECIPE = {"preset": "debug", "vocab_size": 300, "seq_len": 16, "micro_batch_size": 4, "grad_accum": 1,
          "train_samples": 128, "max_steps": 4, "warmup_steps": 1, "lr": 3e-3, "eval_every": 0, "eval_batches": 1,
          "save_every": 2, "log_every": 1, "progress": False, "seed": 0}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r.get("kind") == "train"}


def test_torchrun_two_ranks_then_resume_on_one(tmp_path):
    (tmp_path / "recipe.json").write_text(json.dumps(RECIPE))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port())]
    train = ["-m", "multimodal", "train", "--config", "recipe.json", "--threads", "1", "--dist-timeout", "60"]
    run(torchrun + train + ["--out", "two", "--ep", "2"], tmp_path)
    two = tmp_path / "two"
    assert sorted(p.name for p in (two / "checkpoints").iterdir() if p.name.startswith("step_")) == \
        ["step_00000002", "step_00000004"]
    assert (two / "checkpoints" / "step_00000002" / ".metadata").is_file()          # a DCP checkpoint
    state = json.loads((two / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert state["world_size"] == 2 and state["ep"] == 2
    model = load_pretrained(two / "model")                                            # consolidated export
    assert model.layers[1].ffn.experts.w1.shape[0] == model.config.moe.n_routed_experts
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 256, (1, 8))).logits).all()

    one = tmp_path / "one"
    shutil.copytree(two, one, ignore=shutil.ignore_patterns("step_00000004", "latest", "model"))
    proc = run([sys.executable] + train + ["--out", "one", "--resume"], tmp_path)
    assert "saved on 2 ranks, now 1" in proc.stdout + proc.stderr
    ref, got = losses(two), losses(one)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert abs(got[step] - ref[step]) < 5e-4, (step, got[step], ref[step])
    print("2 ranks:", [round(ref[s], 5) for s in (1, 2, 3, 4)], "resumed on 1:", [round(got[s], 5) for s in (3, 4)])


def test_max_time_stops_every_rank_after_the_same_update(tmp_path):
    """--max-time on 2 ranks: each rank has its own clock, the stop is agreed on, both save the same checkpoint."""
    (tmp_path / "recipe.json").write_text(json.dumps({**RECIPE, "max_steps": 10_000, "save_every": 0}))
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port()), "-m", "multimodal", "train", "--config", "recipe.json", "--out",
                "run", "--threads", "1", "--dist-timeout", "60", "--max-time", "4"], tmp_path)
    assert "(max_time)" in proc.stdout, proc.stdout[-2000:]
    ckpts = [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step_")]
    assert len(ckpts) == 1 and (ckpts[0] / ".metadata").is_file()
    step = json.loads((ckpts[0] / "state.json").read_text())["step"]
    assert 0 < step < 10_000
