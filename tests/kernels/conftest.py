"""Shared fixtures for the kernel parity tests.

Triton kernels run on a CUDA device when one is present, else on the CPU through the Triton
interpreter. The interpreter must be switched on (``TRITON_INTERPRET=1``) before ``triton`` is first
imported, which a test cannot guarantee inside a shared pytest process; so without CUDA and without
the variable, the parity tests skip here and ``test_interpreter.py`` reruns this folder in a fresh
subprocess with ``TRITON_INTERPRET=1`` set from the start (and fails if anything there fails).
"""

from __future__ import annotations

import math

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



# ------------------------------------------------------------------------------------ bf16: no worse than the twin
#: ours' L2 error may exceed the twin's by 5%: noise headroom, not tolerance. Both errors are sums of N >> 1 roundings
#: whose L2 norm concentrates (relative spread about 1/sqrt(2N): under 1% for the N >= 5,000 elements compared here)
L2_FACTOR = 1.05
#: the L2 comparison is a statement about many roundings; smaller tensors (a routing-weight gradient of 2 elements)
#: get the per-element max-abs comparison only
L2_MIN_ELEMENTS = 1000
#: below this (relative to the reference's L2 norm / largest value) differences are fp32 arithmetic order, not
#: precision: about 8 fp32 ulps (2^-20), the level at which the fp32 parity tests already agree
FP32_FLOOR = 2.0 ** -20


def bf16_errors(ours: torch.Tensor, twin: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """L2 and max-abs errors of ``ours`` and ``twin`` against ``ref`` (all compared in float64 on the CPU)."""
    ref = ref.detach().double().cpu()
    e_ours = ours.detach().double().cpu() - ref
    e_twin = twin.detach().double().cpu() - ref
    return {"l2_ours": float(e_ours.norm()), "l2_twin": float(e_twin.norm()), "max_ours": float(e_ours.abs().max()),
            "max_twin": float(e_twin.abs().max()), "l2_ref": float(ref.norm()), "max_ref": float(ref.abs().max())}


def half_ulp(value: float, dtype: torch.dtype) -> float:
    """Half the spacing of ``dtype`` numbers at ``value``: the largest rounding error of a correctly rounded result."""
    if value == 0:
        return 0.0
    eps = torch.finfo(dtype).eps  # spacing at 1: 2^-7 for bf16, 2^-23 for fp32
    return 0.5 * eps * 2.0 ** math.floor(math.log2(abs(value)))


def assert_no_worse_than_twin(ours: torch.Tensor, twin: torch.Tensor, ref: torch.Tensor, what: str) -> dict[str, float]:
    """Our low-precision result is at least as accurate as the PyTorch twin's, both measured against ``ref``.

    ``ref`` is the reference op in float64 on the same (already bf16-rounded) inputs, so input rounding is no
    part of either error; ``twin`` is the reference op run the way a bf16 step runs it (the caller's docstring).
    Asserted, with ``floor`` = ``FP32_FLOOR`` times the reference's scale:

    - L2 (tensors of at least ``L2_MIN_ELEMENTS``): ``||ours - ref|| <= L2_FACTOR * ||twin - ref|| + floor``;
    - max-abs: ``max|ours - ref| <= max|twin - ref| + half_ulp(max|ref|, ours.dtype) + floor``: the two
      implementations round their last fp32 values independently, so at the largest outputs one may sit a
      rounding step away from the other; one half-ulp of slack at the output's own scale, nothing wider.

    Returns the measured errors (for a report).
    """
    s = bf16_errors(ours, twin, ref)
    l2_bound = L2_FACTOR * s["l2_twin"] + FP32_FLOOR * s["l2_ref"]
    max_bound = s["max_twin"] + half_ulp(s["max_ref"], ours.dtype) + FP32_FLOOR * s["max_ref"]
    detail = (f"{what}: ours L2 {s['l2_ours']:.3g} vs twin {s['l2_twin']:.3g} (bound {l2_bound:.3g}); "
              f"max-abs {s['max_ours']:.3g} vs twin {s['max_twin']:.3g} (bound {max_bound:.3g}); "
              f"|ref| L2 {s['l2_ref']:.3g}, max {s['max_ref']:.3g}")
    assert (ref.numel() < L2_MIN_ELEMENTS or s["l2_ours"] <= l2_bound) and s["max_ours"] <= max_bound, detail
    return s
