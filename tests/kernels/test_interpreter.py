"""Run the kernel parity tests through the Triton interpreter when this process cannot.

Without CUDA, the Triton kernels only run on the CPU if ``TRITON_INTERPRET=1`` was set before
``triton`` was imported. A shared pytest process cannot promise that, so this test starts one fresh
subprocess for ``tests/kernels`` with the variable set, and fails if any test there fails or if no
parity test actually ran.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TRITON_RUNS_HERE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.mark.skipif(TRITON_RUNS_HERE, reason="the parity tests already run in this process (CUDA or interpreter)")
def test_kernel_parity_under_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", MULTIMODAL_KERNELS="auto")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE), "-k", "not test_kernel_parity_under"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"interpreter run failed:\n{tail}"
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) > 0, f"no test ran under the interpreter:\n{tail}"
