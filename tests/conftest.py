"""Fixtures for the whole suite."""

from __future__ import annotations

import pytest

from multimodal.training import precision


@pytest.fixture(autouse=True)
def _cpu_precision_as_before(monkeypatch):
    """Training runs in tests ask for bf16 on the CPU and get it, whatever this machine's bf16 speed: "bf16" falls back
    to fp32 where a matmul timed at start-up is slow (multimodal.training.precision), which would make those tests
    depend on the machine; tests of the timing itself use the unpatched function."""
    monkeypatch.setattr(precision, "bf16_speedup", lambda *args, **kwargs: 1.0)
