"""Shared fixtures for the kernel parity tests.

Triton kernels run on a CUDA device when one is present, else on the CPU through the Triton
interpreter. The interpreter must be switched on (``TRITON_INTERPRET=1``) before ``triton`` is first
imported, which a test cannot guarantee inside a shared pytest process; so without CUDA and without
the variable, the parity tests skip here and ``test_interpreter.py`` reruns this folder in a fresh
subprocess with ``TRITON_INTERPRET=1`` set from the start (and fails if anything there fails).
"""

from __future__ import annotations

import pytest
import torch

from multimodal.kernels.dispatch import interpreter_active

HAS_CUDA = torch.cuda.is_available()
#: device the Triton kernels are tested on
KERNEL_DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
TRITON_RUNS_HERE = HAS_CUDA or interpreter_active()

needs_triton = pytest.mark.skipif(
    not TRITON_RUNS_HERE,
    reason="no CUDA and TRITON_INTERPRET unset: run by test_interpreter.py in a TRITON_INTERPRET=1 subprocess",
)
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="bf16 kernel tests need a CUDA device")


@pytest.fixture
def force_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the public ops take the Triton path (``MULTIMODAL_KERNELS=triton``) for one test."""
    monkeypatch.setenv("MULTIMODAL_KERNELS", "triton")


@pytest.fixture
def force_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the public ops take the reference path (``MULTIMODAL_KERNELS=torch``) for one test."""
    monkeypatch.setenv("MULTIMODAL_KERNELS", "torch")


@pytest.fixture(autouse=True)
def _fp32_matmul_is_exact() -> None:
    """fp32 parity tests compare against exact fp32 matmuls: keep TF32 off on GPUs."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = prev


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    """torch.testing.assert_close in fp32 with a message naming the compared quantity."""
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")

