"""Fixtures for the whole suite."""

from __future__ import annotations

import pytest

from multimodal.training import precision


@pytest.fixture(autouse=True)
def _cpu_precision_as_before(monkeypatch):
    """Training runs in tests compute as they did before the timing existed: "auto" is fp32 on the CPU and "bf16" is
    honoured. `precision="auto"` decides by timing a matmul (multimodal.training.precision), which differs between
    machines, and the suite's exact identities are fp32's; tests of the timing itself use the unpatched function."""
    monkeypatch.setattr(precision, "bf16_speedup", lambda *args, **kwargs: 1.0)
