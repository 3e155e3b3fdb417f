"""The Triton-or-reference decision: policy parsing, forcing, and the one-time fallback log line."""

from __future__ import annotations

import logging

import pytest
import torch

from multimodal.kernels import dispatch
from multimodal.kernels.dispatch import KernelUnavailableError, kernel_policy, use_triton


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(dispatch, "_logged", set())


def test_policy_parsing(monkeypatch):
    monkeypatch.delenv("MULTIMODAL_KERNELS", raising=False)
    assert kernel_policy() == "auto"
    monkeypatch.setenv("MULTIMODAL_KERNELS", " Torch ")
    assert kernel_policy() == "torch"
    monkeypatch.setenv("MULTIMODAL_KERNELS", "cuda")
    with pytest.raises(ValueError, match="MULTIMODAL_KERNELS='cuda'"):
        kernel_policy()


def test_cpu_auto_falls_back_and_logs_once(monkeypatch, no_interpreter, caplog):
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    x = torch.zeros(2)
    with caplog.at_level(logging.WARNING, logger="multimodal.kernels"):
        assert not use_triton("some_op", x)
        assert not use_triton("some_op", x)
    lines = [r.getMessage() for r in caplog.records if "some_op" in r.getMessage()]
    assert len(lines) == 1 and "TRITON_INTERPRET" in lines[0]


def test_forced_triton_on_cpu_without_interpreter_raises(monkeypatch, no_interpreter):
    monkeypatch.setenv("MULTIMODAL_KERNELS", "triton")
    with pytest.raises(KernelUnavailableError, match="some_op"):
        use_triton("some_op", torch.zeros(2))


def test_interpreter_and_torch_policies(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    assert use_triton("some_op", torch.zeros(2)) == dispatch.triton_available()
    monkeypatch.setenv("MULTIMODAL_KERNELS", "torch")
    assert not use_triton("some_op", torch.zeros(2))


def test_dot_precision_follows_torch_tf32_flag():
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert dispatch.dot_precision(torch.float32) == "ieee"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert dispatch.dot_precision(torch.float32) == "tf32"
        assert dispatch.dot_precision(torch.bfloat16) == "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
