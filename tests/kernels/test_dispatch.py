"""The Triton-or-reference decision: policy parsing, forcing, the one-time fallback log line (DEBUG for CPU
tensors), one dtype per operand group (``common_dtype`` / ``cast``), and the fallback to the reference when
Triton cannot compile a kernel for a call's dtypes (``run_or_fall_back``), checked through every op."""

from __future__ import annotations

import logging

import pytest
import torch

from multimodal.kernels import dispatch
from multimodal.kernels.dispatch import KernelUnavailableError, kernel_policy, use_triton

from .conftest import KERNEL_DEVICE, assert_close, needs_triton


@pytest.fixture
def no_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(dispatch, "_logged", set())


@pytest.fixture
def fresh_records(monkeypatch):
    """Forget what earlier tests logged or marked unavailable."""
    monkeypatch.setattr(dispatch, "_logged", set())
    monkeypatch.setattr(dispatch, "_unavailable", set())


def _compile_error(message: str = "Both operands must be same dtype. Got bf16 and fp32"):
    from triton.compiler.errors import CompilationError

    return CompilationError(None, None, message)


def test_policy_parsing(monkeypatch):
    monkeypatch.delenv("MULTIMODAL_KERNELS", raising=False)
    assert kernel_policy() == "auto"
    monkeypatch.setenv("MULTIMODAL_KERNELS", " Torch ")
    assert kernel_policy() == "torch"
    monkeypatch.setenv("MULTIMODAL_KERNELS", "cuda")
    with pytest.raises(ValueError, match="MULTIMODAL_KERNELS='cuda'"):
        kernel_policy()


def test_cpu_auto_falls_back_and_logs_once_at_debug(monkeypatch, no_interpreter, caplog):
    """CPU tensors without the interpreter are the routine case: one DEBUG line, nothing at WARNING."""
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    x = torch.zeros(2)
    with caplog.at_level(logging.DEBUG, logger="multimodal.kernels"):
        assert not use_triton("some_op", x)
        assert not use_triton("some_op", x)
    records = [r for r in caplog.records if "some_op" in r.getMessage()]
    assert len(records) == 1 and "TRITON_INTERPRET" in records[0].getMessage()
    assert records[0].levelno == logging.DEBUG


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


# ------------------------------------------------------------------------------------------------- dtypes
def test_grid_helpers_equal_tritons():
    """cdiv / next_power_of_2 size launch grids and tiles without importing Triton; same values as Triton's."""
    triton = pytest.importorskip("triton")

    for a in range(1, 1100):
        assert dispatch.next_power_of_2(a) == triton.next_power_of_2(a)
        for b in (1, 2, 3, 7, 16, 64, 129):
            assert dispatch.cdiv(a, b) == triton.cdiv(a, b)
    assert dispatch.cdiv(0, 16) == 0


def test_common_dtype_and_cast():
    bf, f32, f16 = (torch.zeros(2, dtype=d) for d in (torch.bfloat16, torch.float32, torch.float16))
    ints = torch.zeros(2, dtype=torch.int64)
    assert dispatch.common_dtype(bf, bf, None, ints) == torch.bfloat16  # agreeing operands keep their dtype
    assert dispatch.common_dtype(bf, f32) == torch.float32  # outside autocast: promote, lose nothing
    assert dispatch.common_dtype(bf, f16) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dispatch.common_dtype(bf, f32) == torch.bfloat16  # what autocast would give the matmul
        assert dispatch.common_dtype(f32, f32) == torch.float32  # agreeing operands are not downcast
    with pytest.raises(ValueError, match="no floating-point tensor"):
        dispatch.common_dtype(ints, None)
    a, b, c, d = dispatch.cast(torch.bfloat16, f32, bf, ints, None)
    assert (a.dtype, b.dtype, c.dtype, d) == (torch.bfloat16, torch.bfloat16, torch.int64, None) and b is bf
    assert dispatch.dtype_signature(bf, None, 3) == ("bfloat16", "none", "int")


# ----------------------------------------------------------------------------------- compilation fallback
def test_compile_error_falls_back_once_per_op_and_dtypes(monkeypatch, fresh_records, caplog):
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    calls = []

    def kernel():
        calls.append(1)
        raise _compile_error()

    with caplog.at_level(logging.DEBUG, logger="multimodal.kernels"):
        assert dispatch.run_or_fall_back("some_op", ("bfloat16", "float32"), kernel, lambda: "reference") == "reference"
        assert dispatch.run_or_fall_back("some_op", ("bfloat16", "float32"), kernel, lambda: "reference") == "reference"
        assert len(calls) == 1, "a signature that failed to compile is not tried again"
        assert dispatch.run_or_fall_back("some_op", ("float32", "float32"), lambda: "kernel", lambda: "ref") == "kernel"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "some_op" in message and "bfloat16, float32" in message and "Both operands must be same dtype" in message


def test_compile_error_is_raised_when_triton_is_forced(monkeypatch, fresh_records):
    from triton.compiler.errors import CompilationError

    monkeypatch.setenv("MULTIMODAL_KERNELS", "triton")
    with pytest.raises(CompilationError):
        dispatch.run_or_fall_back("some_op", ("bfloat16",), lambda: (_ for _ in ()).throw(_compile_error()),
                                  lambda: "reference")


def test_other_errors_propagate(monkeypatch, fresh_records):
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    with pytest.raises(ZeroDivisionError):
        dispatch.run_or_fall_back("some_op", ("float32",), lambda: 1 / 0, lambda: "reference")


class _Uncompilable:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args)`` records the tensors' dtypes, then raises
    the CompilationError Triton raises for operands of different dtypes in one tl.dot."""

    def __init__(self, arg_names, seen):
        self.arg_names, self.seen = arg_names, seen

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.seen.append({n: a.dtype for n, a in zip(self.arg_names, args) if isinstance(a, torch.Tensor)})
            raise _compile_error()
        return launch


def _op_calls(device: str | torch.device = "cpu"):
    """Per op: (kernel module, kernel name, op name, call of the op, call of its reference, float leaves)."""
    from multimodal.kernels import engram_gather, indexer_topk, mhc_post, mhc_pre, sparse_mqa
    from multimodal.kernels.engram import naive_engram_gather
    from multimodal.kernels.indexer import naive_indexer_topk
    from multimodal.kernels.mhc import naive_mhc_post, naive_mhc_pre
    from multimodal.kernels.sparse_attention import naive_sparse_mqa

    gen = torch.Generator().manual_seed(0)
    leaf = lambda t: t.to(device).requires_grad_()  # noqa: E731
    r = lambda *shape: leaf(torch.randn(*shape, generator=gen))  # noqa: E731
    ints = lambda t: t.to(device)  # noqa: E731
    q, k, w, thr = r(1, 5, 2, 16), r(1, 7, 16), r(1, 5, 2), ints(torch.tensor([[1, 3, 5, 7, 7]]))
    kv, idx, sink = r(1, 7, 16), ints(torch.randint(-1, 7, (1, 5, 4), generator=gen)), r(2)
    streams, fn, base, scale = r(1, 3, 2, 16), r(8, 32), r(8), leaf(torch.rand(3, generator=gen) + 0.5)
    post, comb, block = leaf(torch.rand(1, 3, 2, generator=gen)), leaf(torch.rand(1, 3, 2, 2, generator=gen)), r(1, 3, 16)
    ids, hist = ints(torch.randint(0, 50, (2, 4), generator=gen)), ints(torch.randint(0, 50, (2, 2), generator=gen))
    mult, primes = ints(torch.tensor([3, 5, 7])), ints(torch.tensor([[5, 7], [11, 13]]))
    offs, table = torch.cumsum(primes.flatten(), 0) - primes.flatten(), r(36, 4)
    return [
        ("indexer", "indexer_scores_kernel", "indexer_topk",
         lambda: indexer_topk(q, k, w, thr, 3, 0.25), lambda: naive_indexer_topk(q, k, w, thr, 3, 0.25), []),
        ("sparse_attention", "sparse_mqa_fwd_kernel", "sparse_mqa",
         lambda: sparse_mqa(q, kv, idx, 0.25, sink), lambda: naive_sparse_mqa(q, kv, idx, 0.25, sink), [q, kv, sink]),
        ("mhc", "mhc_pre_kernel", "mhc_pre",
         lambda: mhc_pre(streams, fn, base, scale, 4, 1e-6, 1e-6),
         lambda: naive_mhc_pre(streams, fn, base, scale, 4, 1e-6, 1e-6), [streams, fn, base, scale]),
        ("mhc", "mhc_post_kernel", "mhc_post",
         lambda: mhc_post(block, streams, post, comb), lambda: naive_mhc_post(block, streams, post, comb),
         [block, streams, post, comb]),
        ("engram", "engram_gather_kernel", "engram_gather",
         lambda: engram_gather(ids, hist, mult, primes, offs, table),
         lambda: naive_engram_gather(ids, hist, mult, primes, offs, table), [table]),
    ]


@pytest.mark.parametrize("case", range(5), ids=["indexer", "sparse_mqa", "mhc_pre", "mhc_post", "engram"])
def test_op_runs_its_reference_when_its_kernel_cannot_compile(monkeypatch, fresh_records, caplog, case):
    """Each op, taking the Triton path (as on a GPU), meets a kernel Triton cannot compile: it returns exactly the
    reference's result, logs one WARNING naming it, and does not launch that kernel again for those dtypes.
    Runs on the CPU without the interpreter: the stand-in kernel raises before anything would run."""
    import importlib

    module, name, op, call, reference, _ = _op_calls()[case]
    seen = []
    kernels = importlib.import_module(f"multimodal.kernels.{module}.triton")
    monkeypatch.setattr(kernels, name, _Uncompilable(getattr(kernels, name).arg_names, seen))
    monkeypatch.setattr(dispatch, "interpreter_active", lambda: True)  # CPU tensors take the Triton path
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    with caplog.at_level(logging.WARNING, logger="multimodal.kernels"):
        first, second = call(), call()
    expected = reference()
    for got in (first, second):
        for g, e in zip(got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else (expected,)):
            assert g.dtype == e.dtype and torch.equal(g, e), f"{op}: not the reference's result"
    assert len(seen) == 1, f"{op}: the kernel was launched again after it failed to compile"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"multimodal.kernels.{op}:" in warnings[0], warnings
    monkeypatch.setenv("MULTIMODAL_KERNELS", "triton")  # forced: the error surfaces
    monkeypatch.setattr(dispatch, "_unavailable", set())
    from triton.compiler.errors import CompilationError
    with pytest.raises(CompilationError):
        call()


@pytest.mark.parametrize("op", ["indexer", "sparse_mqa"])
def test_mixed_dtype_operands_reach_the_kernel_in_one_dtype(monkeypatch, fresh_records, op):
    """bf16 queries with fp32 keys (a Linear's output next to a norm's, under autocast) reach the kernel in one
    dtype: the autocast dtype under autocast, the promoted one outside it."""
    import importlib

    module, name = _op_calls()[0 if op == "indexer" else 1][:2]
    pair = ("q_ptr", "k_ptr") if op == "indexer" else ("q_ptr", "kv_ptr")
    seen = []
    kernels = importlib.import_module(f"multimodal.kernels.{module}.triton")
    monkeypatch.setattr(kernels, name, _Uncompilable(getattr(kernels, name).arg_names, seen))
    monkeypatch.setattr(dispatch, "interpreter_active", lambda: True)
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")
    from multimodal.kernels import indexer_topk, sparse_mqa
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 5, 2, 16, generator=gen).bfloat16()  # [B,S,H,D] bf16
    k = torch.randn(1, 7, 16, generator=gen)  # [B,T,D] fp32
    idx = torch.randint(0, 7, (1, 5, 3), generator=gen)
    run = (lambda: indexer_topk(q, k, torch.rand(1, 5, 2), torch.full((1, 5), 7), 3, 0.25)) if op == "indexer" \
        else (lambda: sparse_mqa(q, k, idx, 0.25))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run()
    monkeypatch.setattr(dispatch, "_unavailable", set())
    run()
    assert [tuple(s[p] for p in pair) for s in seen] == [(torch.bfloat16,) * 2, (torch.float32,) * 2]
    if op == "sparse_mqa":
        assert out.dtype == torch.bfloat16  # q's dtype, as the reference returns


@needs_triton
@pytest.mark.parametrize("case,kernel", [(1, "sparse_mqa_bwd_kernel"), (2, "mhc_pre_bwd_dpre_kernel"),
                                         (3, "mhc_post_bwd_kernel"), (4, "engram_scatter_kernel")],
                         ids=["sparse_mqa", "mhc_pre", "mhc_post", "engram"])
def test_backward_runs_the_reference_when_its_kernel_cannot_compile(monkeypatch, fresh_records, caplog, case, kernel):
    """The forward kernel runs; the backward kernel cannot compile: the gradients come from autograd through the
    reference (``reference_vjp``), equal to the reference's own, with one WARNING naming ``<op>.backward``."""
    import importlib

    module, _, op, call, reference, leaves = _op_calls(KERNEL_DEVICE)[case]
    kernels = importlib.import_module(f"multimodal.kernels.{module}.triton")
    seen = []
    monkeypatch.setattr(kernels, kernel, _Uncompilable(getattr(kernels, kernel).arg_names, seen))
    monkeypatch.setenv("MULTIMODAL_KERNELS", "auto")

    def grads(fn):
        outs = fn()
        outs = outs if isinstance(outs, tuple) else (outs,)
        cot = torch.Generator().manual_seed(5)
        loss = sum((o.float() * torch.randn(o.shape, generator=cot)).sum() for o in outs)
        return torch.autograd.grad(loss, leaves, allow_unused=True)

    with caplog.at_level(logging.WARNING, logger="multimodal.kernels"):
        got = grads(call)
    expected = grads(reference)
    assert len(seen) == 1
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if g is not None:
            assert_close(g.cpu(), e.cpu(), 1e-5, 1e-5, f"{op} gradient")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"multimodal.kernels.{op}.backward:" in warnings[0], warnings
