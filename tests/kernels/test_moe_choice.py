"""moe_ffn's second fast path (``torch._grouped_mm``), the timed choice between the paths, and mixed dtypes.

- The grouped_mm path equals ``naive_moe_ffn`` forward and all five gradients in fp32 (atol/rtol 1e-4, as the
  Triton parity tests): ``torch._grouped_mm`` runs forward and backward on the CPU (seen in torch 2.11 and 2.14;
  fp32, bf16, fp16; its CPU implementation is a loop of GEMMs), so this runs in the main test process; it skips
  where the installed torch cannot.
- The chooser: picks the faster of injected timings, stores one decision per key (tokens bucketed by powers of
  two), measures each key once, and after that decides without touching tensor values (no host sync).
- Mixed dtypes (issue: bf16 activations with fp32 parameters under autocast): under
  ``torch.autocast("cpu", torch.bfloat16)`` bf16 x with fp32 weights runs on both fast paths and matches the
  fp32 reference within bf16 tolerance (max error <= 2e-2 of the largest output value, 4e-2 for gradients),
  with the output in x's dtype and every gradient in its parameter's dtype.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from multimodal.kernels.moe import moe_ffn, naive_moe_ffn
from multimodal.kernels.moe import op as moe_op
from multimodal.kernels.moe.choice import CHOICES, KernelChoice, choice_key, token_bucket
from multimodal.kernels.moe.grouped import grouped_mm_moe_ffn, grouped_mm_unsupported

from .conftest import HAS_CUDA, KERNEL_DEVICE, assert_close, needs_triton
from .test_moe import _problem, _run


def _cpu_grouped_mm_differentiates() -> bool:
    """torch._grouped_mm exists and runs forward and backward on the CPU (torch 2.14 does; older builds may not)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a = torch.ones(4, 4, requires_grad=True)
        b = torch.ones(2, 4, 4, requires_grad=True)
        out = torch._grouped_mm(a, b, offs=torch.tensor([1, 4], dtype=torch.int32))
        torch.autograd.grad(out, [a, b], torch.ones(4, 4))
    except (RuntimeError, NotImplementedError):
        return False
    return True


needs_grouped_mm = pytest.mark.skipif(not _cpu_grouped_mm_differentiates(),
                                      reason="torch._grouped_mm missing, or without a CPU forward and backward")

GROUPED_CASES = [
    # T, H, I, E, k, expert without tokens, swiglu_limit (H, I: rows of 16 bytes in fp32)
    (37, 24, 40, 5, 2, 3, None),
    (37, 24, 40, 5, 2, 3, 0.5),
    (19, 32, 16, 4, 1, 0, 0.7),  # k = 1
    (1, 16, 16, 6, 3, None, None),  # T = 1: most experts idle
]


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.float()
    return ((actual.float() - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


# ----------------------------------------------------------------------------------------------- grouped_mm path
@needs_grouped_mm
@pytest.mark.parametrize("T,H,I,E,k,empty,limit", GROUPED_CASES)
def test_grouped_mm_path_matches_reference_fp32(T, H, I, E, k, empty, limit):
    tensors = _problem(T, H, I, E, k, empty, torch.float32, "cpu")
    ref_tensors = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
    assert grouped_mm_unsupported(*tensors[:4], k) is None
    out, grads = _run(grouped_mm_moe_ffn, tensors, limit)
    ref, ref_grads = _run(naive_moe_ffn, ref_tensors, limit)
    assert_close(out, ref, 1e-4, 1e-4, "out")
    for name, g, rg in zip(("dx", "dw1", "dw3", "dw2", "dweights"), grads, ref_grads):
        assert_close(g, rg, 1e-4, 1e-4, name)
    if empty is not None:
        assert torch.all(grads[1][empty] == 0) and torch.all(grads[3][empty] == 0), "idle expert got a gradient"


def test_grouped_mm_unsupported_names_the_reason():
    x, w1, w3, w2 = (t.detach() for t in _problem(5, 24, 40, 3, 2, None, torch.float32, "cpu")[:4])
    if not hasattr(torch, "_grouped_mm"):
        assert "no torch._grouped_mm" in grouped_mm_unsupported(x, w1, w3, w2, 2)
        return
    assert grouped_mm_unsupported(x, w1, w3, w2, 2) is None
    xo, w1o, w3o, w2o = (t.detach() for t in _problem(5, 20, 40, 3, 2, None, torch.float32, "cpu")[:4])
    assert grouped_mm_unsupported(xo, w1o, w3o, w2o, 2) is None  # H = 20: rows of 80 bytes in fp32
    assert "16 bytes" in grouped_mm_unsupported(xo.bfloat16(), w1o.bfloat16(), w3o.bfloat16(), w2o.bfloat16(), 2)
    assert "float64" in grouped_mm_unsupported(x.double(), w1.double(), w3.double(), w2.double(), 2)
    assert "different dtypes" in grouped_mm_unsupported(x.bfloat16(), w1, w3, w2, 2)
    assert "meta" in grouped_mm_unsupported(x.to("meta"), w1.to("meta"), w3.to("meta"), w2.to("meta"), 2)


# ----------------------------------------------------------------------------------------------- chooser
class FakeTimer:
    """Injected timings: {name: ms} per call, and a count of the measurements (the candidates are not run)."""

    def __init__(self, *timings: dict[str, float]):
        self.timings = list(timings)
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, candidates, device):
        self.calls.append(tuple(candidates))
        return dict(self.timings[min(len(self.calls), len(self.timings)) - 1])


def _factory(built: list[int]):
    def make():
        built.append(1)
        return {"triton": lambda: None, "grouped_mm": lambda: None}
    return make


def test_token_bucket_and_key():
    assert [token_bucket(t) for t in (0, 1, 2, 3, 4, 5, 4096, 4097)] == [1, 1, 2, 4, 4, 8, 4096, 8192]
    cpu = torch.device("cpu")
    assert choice_key(cpu, torch.bfloat16, 3000, 64, 32, 8, 2, True) == choice_key(cpu, torch.bfloat16, 4096, 64, 32,
                                                                                     8, 2, True)
    assert choice_key(cpu, torch.bfloat16, 4096, 64, 32, 8, 2, True) != choice_key(cpu, torch.bfloat16, 4097, 64, 32,
                                                                                     8, 2, True)
    assert choice_key(cpu, torch.bfloat16, 9, 64, 32, 8, 2, True) != choice_key(cpu, torch.bfloat16, 9, 64, 32, 8, 2,
                                                                                 False)


def test_chooser_picks_the_faster_injected_timing_and_caches_per_key(caplog):
    timer = FakeTimer({"triton": 2.0, "grouped_mm": 1.0}, {"triton": 1.0, "grouped_mm": 3.0})
    chooser = KernelChoice(timer=timer, device_types=frozenset({"cpu"}))
    cpu = torch.device("cpu")
    small = choice_key(cpu, torch.bfloat16, 100, 64, 32, 8, 2, True)
    large = choice_key(cpu, torch.bfloat16, 5000, 64, 32, 8, 2, True)
    built: list[int] = []
    with caplog.at_level(logging.DEBUG, logger="multimodal.kernels"):
        assert chooser.choose(small, cpu, _factory(built)) == "grouped_mm"
    assert len(timer.calls) == 1 and timer.calls[0] == ("triton", "grouped_mm") and len(built) == 1
    assert "T<=128" in caplog.text and "grouped_mm 1.000" in caplog.text, "the table is logged at DEBUG"
    # same key (another token count in the same bucket): the table answers, nothing is built or timed
    assert chooser.choose(choice_key(cpu, torch.bfloat16, 65, 64, 32, 8, 2, True), cpu, _factory(built)) == "grouped_mm"
    assert len(timer.calls) == 1 and len(built) == 1
    # a new key is measured once: this time Triton is faster
    assert chooser.choose(large, cpu, _factory(built)) == "triton"
    assert chooser.choose(large, cpu, _factory(built)) == "triton"
    assert len(timer.calls) == 2
    assert chooser.table[small].ms == {"triton": 2.0, "grouped_mm": 1.0}
    assert {chooser.lookup(small), chooser.lookup(large)} == {"grouped_mm", "triton"}
    assert chooser.format().count("->") == 3  # header + two keys
    assert "empty" in KernelChoice().format()


def test_chooser_ties_failures_and_unmeasured_devices_go_to_triton():
    cpu = torch.device("cpu")
    key = choice_key(cpu, torch.float32, 8, 16, 16, 4, 2, False)
    tie = KernelChoice(timer=FakeTimer({"triton": 1.0, "grouped_mm": 1.0}), device_types=frozenset({"cpu"}))
    assert tie.choose(key, cpu, _factory([])) == "triton"
    failed = KernelChoice(timer=FakeTimer({"triton": math.inf, "grouped_mm": math.inf}),
                          device_types=frozenset({"cpu"}))
    assert failed.choose(key, cpu, _factory([])) == "triton"
    timer = FakeTimer({"triton": 5.0, "grouped_mm": 1.0})
    cuda_only = KernelChoice(timer=timer)  # the default: measure on CUDA devices only
    built: list[int] = []
    assert cuda_only.choose(key, cpu, _factory(built)) == "triton"
    assert timer.calls == [] and built == [] and cuda_only.table == {}, "nothing measured or stored on the CPU"


@pytest.fixture
def injected(monkeypatch):
    """The process table, emptied for one test, measuring CPU calls with injected timings (grouped_mm faster)."""
    timer = FakeTimer({"triton": 2.0, "grouped_mm": 1.0})
    monkeypatch.setattr(CHOICES, "table", {})
    monkeypatch.setattr(CHOICES, "timer", timer)
    monkeypatch.setattr(CHOICES, "device_types", {"cpu", "cuda"})
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    return timer


@needs_grouped_mm
def test_decision_after_the_first_call_reads_no_tensor_values(injected, monkeypatch):
    """After a key's first call, choose_path touches shapes, dtypes and flags only: no value reaches the host."""
    x, w1, w3, w2, indices, weights = _problem(40, 24, 40, 5, 2, None, torch.float32, "cpu")
    assert moe_op.choose_path(x, w1, w3, w2, indices, weights, None) == "grouped_mm"
    assert len(injected.calls) == 1

    def no_sync(*args, **kwargs):
        raise AssertionError("the decision read a tensor value (a host sync on a GPU)")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    x2, indices2, weights2 = x[:33], indices[:33], weights[:33]  # 33 tokens: same bucket (<= 64)
    assert moe_op.choose_path(x2, w1, w3, w2, indices2, weights2, None) == "grouped_mm"
    monkeypatch.undo()
    assert len(injected.calls) == 1, "a stored key was measured again"


@needs_triton
@needs_grouped_mm
def test_candidates_compute_the_same_thing(force_triton):
    """The two timed candidates (forward + backward on detached copies) return matching outputs."""
    x, w1, w3, w2, indices, weights = _problem(23, 24, 40, 5, 2, 3, torch.float32, KERNEL_DEVICE)
    cands = moe_op._candidates(x, w1, w3, w2, indices, weights, 0.5, training=True)
    assert list(cands) == ["triton", "grouped_mm"]
    outs = {name: fn() for name, fn in cands.items()}
    assert_close(outs["grouped_mm"], outs["triton"], 1e-4, 1e-4, "candidates")
    assert x.grad is None and w1.grad is None, "measurement must not touch the caller's .grad"


@needs_triton
@needs_grouped_mm
def test_moe_ffn_auto_follows_the_table_and_triton_policy_overrides(injected, monkeypatch):
    calls: list[str] = []
    original = moe_op.grouped_mm_moe_ffn

    def spy(*args, **kwargs):
        calls.append("grouped_mm")
        return original(*args, **kwargs)

    monkeypatch.setattr(moe_op, "grouped_mm_moe_ffn", spy)
    monkeypatch.setattr(moe_op, "grouped_mm_unsupported", lambda *args: None)  # fp32 on a GPU: routing is the point
    tensors = _problem(37, 24, 40, 5, 2, 3, torch.float32, KERNEL_DEVICE)
    ref_tensors = [t.detach().cpu().requires_grad_(t.requires_grad) for t in tensors]
    out, grads = _run(moe_ffn, tensors, 0.5)
    ref, ref_grads = _run(naive_moe_ffn, ref_tensors, 0.5)
    assert calls == ["grouped_mm"] and len(injected.calls) == 1
    assert out.grad_fn is not None and "MoEFFNFunction" not in type(out.grad_fn).__name__
    assert_close(out.cpu(), ref, 1e-4, 1e-4, "auto out")
    for name, g, rg in zip(("dx", "dw1", "dw3", "dw2", "dweights"), grads, ref_grads):
        assert_close(g.cpu(), rg, 1e-4, 1e-4, "auto " + name)
    monkeypatch.setenv("MULTIMODAL_KERNELS", "triton")  # forcing Triton ignores the table
    out = moe_ffn(*tensors, swiglu_limit=0.5)
    assert calls == ["grouped_mm"] and "MoEFFNFunction" in type(out.grad_fn).__name__


@needs_triton
def test_auto_without_measurement_keeps_triton(monkeypatch):
    """By default nothing is measured on the CPU (interpreter time means nothing): auto runs the Triton kernels."""
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    monkeypatch.setattr(CHOICES, "table", {})
    tensors = _problem(9, 24, 40, 3, 2, None, torch.float32, "cpu")
    if HAS_CUDA:
        pytest.skip("measured on CUDA: covered by test_cuda_auto_choice_measures_once_then_never_syncs")
    out = moe_ffn(*tensors)
    assert "MoEFFNFunction" in type(out.grad_fn).__name__ and CHOICES.table == {}


# ----------------------------------------------------------------------------------------------- dtypes
def test_compute_dtype():
    x = torch.zeros(2, 8, dtype=torch.bfloat16)
    w = torch.zeros(1, 8, 8)
    assert moe_op.compute_dtype(x, w, w, w) == torch.float32
    assert moe_op.compute_dtype(x, w.bfloat16(), w.bfloat16(), w.bfloat16()) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert moe_op.compute_dtype(x, w, w, w) == torch.bfloat16
        assert moe_op.compute_dtype(x.float(), w, w, w) == torch.bfloat16  # as autocast casts a matmul


def _mixed_problem():
    """bf16 activations, fp32 expert weights and routing weights (what a Linear under autocast hands the MoE)."""
    x, w1, w3, w2, indices, weights = _problem(37, 24, 40, 5, 2, 3, torch.float32, KERNEL_DEVICE)
    return [x.detach().bfloat16().requires_grad_(), w1, w3, w2, indices, weights]


@needs_triton
@pytest.mark.parametrize("path", ["triton", "grouped_mm"])
@pytest.mark.parametrize("limit", [None, 7.0])
def test_bf16_x_fp32_weights_under_autocast_match_reference(path, limit, monkeypatch):
    """The crash this fixes: tl.dot got bf16 x with fp32 weights. Now both fast paths compute in bf16.

    A tight clamp (0.5) is left out on purpose: rounding g or u to bf16 flips which side of L they fall on, and
    the gradient with it, for the reference under autocast as much as for the kernels.
    """
    if path == "grouped_mm":
        if not _cpu_grouped_mm_differentiates():
            pytest.skip("torch._grouped_mm missing, or without a CPU forward and backward")
        monkeypatch.setattr(CHOICES, "table", {})
        monkeypatch.setattr(CHOICES, "timer", FakeTimer({"triton": 2.0, "grouped_mm": 1.0}))
        monkeypatch.setattr(CHOICES, "device_types", {"cpu", "cuda"})
        monkeypatch.setattr(moe_op, "grouped_mm_unsupported", lambda *args: None)  # any GPU generation
        monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    else:
        monkeypatch.setenv("MULTIMODAL_KERNELS", "triton")
    tensors = _mixed_problem()
    device_type = KERNEL_DEVICE.type
    with torch.autocast(device_type, dtype=torch.bfloat16):
        out, grads = _run(moe_ffn, tensors, limit)
    ref_tensors = [t.detach().float().cpu().requires_grad_(True) if t.is_floating_point() else t.cpu()
                   for t in tensors]
    ref, ref_grads = _run(naive_moe_ffn, ref_tensors, limit)
    assert out.dtype == torch.bfloat16
    if path == "triton":
        assert "MoEFFNFunction" in type(out.grad_fn).__name__
    else:  # measured (injected) once, in the autocast dtype, and the grouped_mm path ran
        assert [(key[1], entry.path) for key, entry in CHOICES.table.items()] == [("bfloat16", "grouped_mm")]
        assert "MoEFFNFunction" not in type(out.grad_fn).__name__
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32, torch.float32, torch.float32]
    assert _rel_err(out.cpu(), ref) < 2e-2, f"out: {_rel_err(out.cpu(), ref):.3g}"
    for gname, g, rg in zip(("dx", "dw1", "dw3", "dw2", "dweights"), grads, ref_grads):
        assert _rel_err(g.cpu(), rg) < 4e-2, f"{gname}: {_rel_err(g.cpu(), rg):.3g}"


@needs_triton
def test_bf16_x_fp32_weights_without_autocast_compute_in_fp32(force_triton):
    """Outside autocast the operands meet in the promoted dtype (fp32): only the bf16 output rounding is left."""
    tensors = _mixed_problem()
    out, grads = _run(moe_ffn, tensors, 0.5)
    ref_tensors = [t.detach().float().cpu().requires_grad_(True) if t.is_floating_point() else t.cpu()
                   for t in tensors]
    ref, ref_grads = _run(naive_moe_ffn, ref_tensors, 0.5)
    assert out.dtype == torch.bfloat16 and grads[1].dtype == torch.float32
    assert _rel_err(out.cpu(), ref) < 8e-3
    for gname, g, rg in zip(("dx", "dw1", "dw3", "dw2", "dweights"), grads, ref_grads):
        assert _rel_err(g.cpu(), rg) < 2e-2, gname


# ----------------------------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not HAS_CUDA, reason="the measured choice and the sync check need a CUDA device")
def test_cuda_auto_choice_measures_once_then_never_syncs(monkeypatch):
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    monkeypatch.setattr(CHOICES, "table", {})
    measured: list[dict[str, float]] = []
    real_timer = CHOICES.timer

    def recording_timer(candidates, device):
        measured.append(real_timer(candidates, device))
        return measured[-1]

    monkeypatch.setattr(CHOICES, "timer", recording_timer)
    x, w1, w3, w2, indices, weights = _problem(300, 256, 128, 16, 6, 5, torch.bfloat16, "cuda")
    out, _ = _run(moe_ffn, [x, w1, w3, w2, indices, weights], 7.0)  # first call: measures (if grouped_mm qualifies)
    ref = naive_moe_ffn(*(t.detach().float() if t.is_floating_point() else t for t in (x, w1, w3, w2, indices,
                                                                                          weights)), 7.0)
    assert _rel_err(out, ref) < 2e-2
    reason = grouped_mm_unsupported(x, w1, w3, w2, 6)
    if reason is None:
        assert len(measured) == 1 and set(measured[0]) == {"triton", "grouped_mm"}
        assert all(math.isfinite(v) for v in measured[0].values()), measured
    else:
        assert measured == [], reason
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = moe_ffn(x, w1, w3, w2, indices, weights, 7.0)
        torch.autograd.grad(out, [x, w1, w3, w2, weights], out.detach())
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    assert len(measured) == (1 if reason is None else 0)
