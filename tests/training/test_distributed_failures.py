"""Bad launches and lost ranks end with a clear error and a non-zero exit on every rank, within a timeout.

Each case starts real `python -m multimodal train` processes with the environment torchrun gives its workers
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, MASTER_PORT) and a short `--dist-timeout`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .distributed_cases import free_port

REPO = Path(__file__).resolve().parents[2]
RECIPE = {"preset": "debug", "vocab_size": 300, "seq_len": 16, "micro_batch_size": 2, "grad_accum": 1,
          "train_samples": 64, "max_steps": 500, "warmup_steps": 1, "lr": 3e-3, "eval_every": 0, "eval_batches": 1,
          "save_every": 0, "log_every": 1, "progress": False, "seed": 0}
DIST_TIMEOUT = 8           # seconds, --dist-timeout of the training ranks (collectives under a loaded CPU)
SHORT = 4                  # seconds, --dist-timeout of the launches that fail before any training
MISMATCH_JOIN = 45         # seconds, --dist-timeout of the mismatched launch (found at join, not after it)
WAIT = 90                  # seconds a test waits for all processes to exit before calling it a hang


def start_rank(tmp: Path, rank: int, world: int, port: int, timeout: float = DIST_TIMEOUT) -> subprocess.Popen:
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "recipe.json"
    config.write_text(json.dumps(RECIPE))
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "multimodal", "train", "--config", str(config), "--out", str(tmp / "run"),
           "--threads", "1", "--dist-timeout", str(timeout)]
    return subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """(exit code, stderr) of each process; kills them all and fails the test if any is still running at WAIT."""
    deadline = time.monotonic() + WAIT
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a rank was still running after {WAIT}s: the failure became a hang")
        results.append((p.returncode, err))
    return results


@pytest.fixture(scope="module")
def launch_failures(tmp_path_factory):
    """The three bad launches, started at once (they spend most of their time waiting): mismatched world sizes
    (ranks 0 and 1 told WORLD_SIZE 2 and 3), a missing rank (rank 0 of 2 alone), an unreachable rendezvous (rank 1
    of 2 pointed at a port where nothing listens). Returns {case: [(exit code, stderr, seconds)]}."""
    tmp = tmp_path_factory.mktemp("launch_failures")
    port = free_port()
    t0 = time.monotonic()
    # the mismatch is found as soon as both ranks have joined; a long rendezvous timeout keeps a rank that is slow
    # to import torch (four interpreters start at once on 2 cores) from being reported missing instead
    cases = {"mismatch": [start_rank(tmp / "mismatch", 0, 2, port, timeout=MISMATCH_JOIN),
                          start_rank(tmp / "mismatch", 1, 3, port, timeout=MISMATCH_JOIN)],
             "missing": [start_rank(tmp / "missing", 0, 2, free_port(), timeout=SHORT)],
             "unreachable": [start_rank(tmp / "unreachable", 1, 2, free_port(), timeout=SHORT)]}
    out = {}
    for name, procs in cases.items():
        out[name] = [(code, err, time.monotonic() - t0) for code, err in finish(procs)]
    return out


def test_mismatched_world_sizes(launch_failures):
    for code, err, seconds in launch_failures["mismatch"]:
        assert code != 0
        assert "mismatched world sizes" in err and "WORLD_SIZE=2" in err and "WORLD_SIZE=3" in err, err[-2000:]
        assert seconds < WAIT


def test_missing_rank_is_reported_after_the_timeout(launch_failures):
    """Rank 0 of 2 started alone (a node that never came up): it names the missing rank."""
    [(code, err, seconds)] = launch_failures["missing"]
    assert code != 0
    assert "rank 1 did not join" in err, err[-2000:]
    assert SHORT <= seconds < WAIT


def test_unreachable_rendezvous(launch_failures):
    """Rank 1 pointed at a port where no rendezvous listens."""
    [(code, err, seconds)] = launch_failures["unreachable"]
    assert code != 0
    assert "cannot reach the rendezvous" in err, err[-2000:]
    assert seconds < WAIT


def test_a_rank_that_dies_stops_the_others(tmp_path):
    """Both ranks train; once training is under way rank 1 is killed with SIGKILL. Rank 0 must fail with a clear
    message and a non-zero exit instead of waiting forever in its next collective."""
    port = free_port()
    procs = [start_rank(tmp_path, 0, 2, port), start_rank(tmp_path, 1, 2, port)]
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + WAIT
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail("training did not start: " + "".join(p.communicate()[1][-1500:] for p in procs))
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    (code0, err0), (code1, _) = finish(procs)
    assert code1 == -signal.SIGKILL
    assert code0 != 0
    assert "rank 0: lost contact with the other ranks" in err0, err0[-2000:]
    print(f"rank 0 exited {time.monotonic() - killed_at:.1f}s after rank 1 was killed")


def test_parallel_degrees_that_cannot_work_are_refused_before_any_network():
    from multimodal.training.distributed import DistributedError, ParallelConfig, init_distributed

    env = {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with pytest.raises(DistributedError, match="ep=3 must divide the world size 4"):
        init_distributed(ParallelConfig(ep=3), env=env)
    with pytest.raises(DistributedError, match="outside"):
        init_distributed(ParallelConfig(), env={**env, "RANK": "4"})
    with pytest.raises(DistributedError, match="needs 2 processes"):
        init_distributed(ParallelConfig(ep=2), env={})
    with pytest.raises(ValueError, match="ep"):
        ParallelConfig(ep=0)
