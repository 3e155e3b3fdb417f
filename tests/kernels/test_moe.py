"""moe_ffn: Triton kernel vs the per-expert-loop reference, forward and all five gradients.

fp32 on the CPU interpreter (or CUDA with TF32 off): atol 1e-4, rtol 1e-4. bf16 on CUDA: no worse than the PyTorch
twin, against a float64 reference on the same bf16 numbers (``moe_bf16_cases``).
"""

from __future__ import annotations

import pytest
import torch

from multimodal.kernels.moe import moe_ffn
from multimodal.kernels.moe.naive import naive_moe_ffn, swiglu

from .conftest import KERNEL_DEVICE, assert_close, assert_no_worse_than_twin, needs_cuda, needs_triton


def _problem(T: int, H: int, I: int, E: int, k: int, empty_expert: int | None, dtype, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=gen)
    w1 = torch.randn(E, I, H, generator=gen) / H**0.5
    w3 = torch.randn(E, I, H, generator=gen) / H**0.5
    w2 = torch.randn(E, H, I, generator=gen) / I**0.5
    allowed = [e for e in range(E) if e != empty_expert]
    scores = torch.rand(T, len(allowed), generator=gen)
    indices = torch.tensor(allowed)[scores.topk(k, dim=1).indices]  # [T, k], distinct experts per token
    weights = torch.rand(T, k, generator=gen)
    return [t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype).requires_grad_(t.is_floating_point())
            for t in (x, w1, w3, w2, indices, weights)]


def _run(fn, tensors, limit):
    x, w1, w3, w2, indices, weights = tensors
    out = fn(x, w1, w3, w2, indices, weights, limit)
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(out.shape, generator=gen).to(out)
    grads = torch.autograd.grad(out, [x, w1, w3, w2, weights], dout)
    return out, grads


CASES = [
    # T, H, I, E, k, expert without tokens, swiglu_limit
    (37, 24, 40, 5, 2, 3, None),
    (37, 24, 40, 5, 2, 3, 0.5),
    (19, 33, 17, 4, 1, 0, 0.7),  # k = 1, odd H and I
    (1, 16, 16, 6, 3, None, None),  # T = 1: most experts idle
]


@needs_triton
@pytest.mark.parametrize("T,H,I,E,k,empty,limit", CASES)
def test_moe_ffn_matches_reference_fp32(force_triton, T, H, I, E, k, empty, limit):
    tensors = _problem(T, H, I, E, k, empty, torch.float32, KERNEL_DEVICE)
    ref_tensors = [t.detach().cpu().requires_grad_(t.requires_grad) for t in tensors]
    out, grads = _run(moe_ffn, tensors, limit)
    ref, ref_grads = _run(naive_moe_ffn, ref_tensors, limit)
    assert_close(out.cpu(), ref, 1e-4, 1e-4, "out")
    for name, g, rg in zip(("dx", "dw1", "dw3", "dw2", "dweights"), grads, ref_grads):
        assert_close(g.cpu(), rg, 1e-4, 1e-4, name)
    if empty is not None:
        assert torch.all(grads[1][empty] == 0) and torch.all(grads[3][empty] == 0), "idle expert got a gradient"


@needs_triton
def test_moe_ffn_inference_under_no_grad(force_triton):
    """Under no_grad (parameters still requiring grad) the forward skips saving g/u and still matches."""
    tensors = _problem(23, 24, 40, 5, 2, 3, torch.float32, KERNEL_DEVICE)
    with torch.no_grad():
        out = moe_ffn(*tensors, swiglu_limit=0.5)
        ref = naive_moe_ffn(*[t.cpu() for t in tensors], swiglu_limit=0.5)
    assert out.grad_fn is None
    assert_close(out.cpu(), ref, 1e-4, 1e-4, "no_grad out")


def test_clamp_is_active_in_limit_case():
    """The limit cases above really clamp: the limited reference differs from the unlimited one."""
    tensors = _problem(37, 24, 40, 5, 2, 3, torch.float32, "cpu")
    with torch.no_grad():
        a = naive_moe_ffn(*tensors, swiglu_limit=0.5)
        b = naive_moe_ffn(*tensors, swiglu_limit=None)
    assert (a - b).abs().max() > 1e-2


def test_reference_matches_dense_formula():
    """The per-expert loop equals the per-token formula written out densely."""
    x, w1, w3, w2, indices, weights = (t.detach() for t in _problem(9, 8, 12, 3, 2, None, torch.float32, "cpu"))
    out = naive_moe_ffn(x, w1, w3, w2, indices, weights, 1.0)
    expected = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(indices.shape[1]):
            e = indices[t, j]
            g = (w1[e] @ x[t]).clamp(max=1.0)
            u = (w3[e] @ x[t]).clamp(-1.0, 1.0)
            expected[t] += weights[t, j] * (w2[e] @ (torch.nn.functional.silu(g) * u))
    assert_close(out, expected, 1e-5, 1e-5, "naive vs formula")


def test_cpu_without_interpreter_falls_back(force_torch):
    tensors = [t.detach() for t in _problem(5, 8, 8, 3, 2, None, torch.float32, "cpu")]
    assert_close(moe_ffn(*tensors), naive_moe_ffn(*tensors), 0, 0, "fallback")


def moe_reference64(x, w1, w3, w2, indices, weights, swiglu_limit=None):
    """``naive_moe_ffn``'s per-expert loop in float64 (``naive_moe_ffn`` widens to fp32 only): the bf16 tests' reference."""
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for e in range(w1.shape[0]):
        token, slot = torch.where(indices == e)
        if token.numel():
            xe = x[token].double()
            y = swiglu(xe @ w1[e].double().T, xe @ w3[e].double().T, swiglu_limit) @ w2[e].double().T
            out = out.index_add(0, token, y * weights[token, slot].double()[:, None])
    return out


def test_float64_reference_is_the_reference():
    tensors = [t.detach() for t in _problem(37, 24, 40, 5, 2, 3, torch.float32, "cpu")]
    assert_close(moe_reference64(*tensors, 0.5), naive_moe_ffn(*tensors, 0.5), 1e-5, 1e-5, "float64 loop vs naive")


def moe_bf16_cases(T, H, I, E, k, empty, limit, device, kernel_dtype=torch.bfloat16, twin_autocast=True):
    """{name: (ours, twin, ref)} for the output and the five gradients of moe_ffn on bf16 inputs.

    The inputs (x, w1, w3, w2, weights) and the output cotangent are bf16 numbers, so input rounding is in no error.
    ref: ``moe_reference64`` (float64, CPU) on those numbers. twin: ``naive_moe_ffn`` on ``device`` on the bf16 tensors
    under ``torch.autocast(bf16)`` (``twin_autocast``), as a bf16 training step runs PyTorch code (bf16 GEMMs,
    fp32 accumulation), or without it (fp32 arithmetic, one rounding at the end). ours: ``moe_ffn`` on ``device``
    in ``kernel_dtype`` (bf16 on a GPU; fp32 under the CPU interpreter, the results then rounded once to bf16).
    """
    base = [t.detach() for t in _problem(T, H, I, E, k, empty, torch.float32, "cpu")]
    base = [t.bfloat16() if t.is_floating_point() else t for t in base]  # the bf16 numbers everyone gets
    cot = torch.randn(T, H, generator=torch.Generator().manual_seed(1)).bfloat16()

    def run(fn, where, dtype, autocast=False):
        leaves = [t.to(where, dtype).requires_grad_() if t.is_floating_point() else t.to(where) for t in base]
        x, w1, w3, w2, indices, weights = leaves
        with torch.autocast(torch.device(where).type, dtype=torch.bfloat16, enabled=autocast):
            out = fn(x, w1, w3, w2, indices, weights, limit)
        grads = torch.autograd.grad(out, [x, w1, w3, w2, weights], cot.to(where, out.dtype))
        return [out, *grads]

    ref = run(moe_reference64, "cpu", torch.float64)
    twin = run(naive_moe_ffn, device, torch.bfloat16, autocast=twin_autocast)
    ours = [t.bfloat16() for t in run(moe_ffn, device, kernel_dtype)]  # a no-op for a bf16 kernel
    return {name: (o, t, r) for name, o, t, r in zip(("out", "dx", "dw1", "dw3", "dw2", "dweights"), ours, twin, ref)}


@needs_cuda
@pytest.mark.parametrize("T,H,I,E,k,empty,limit", [(300, 256, 192, 16, 6, 5, 7.0), (1, 128, 64, 8, 2, None, None)])
def test_moe_ffn_bf16_cuda(force_triton, T, H, I, E, k, empty, limit):
    """bf16 moe_ffn on a GPU is no less accurate than naive_moe_ffn run as a bf16 training step runs it.

    Each output and gradient is compared with ``assert_no_worse_than_twin`` (conftest: L2 within 5% of the twin's
    error, max-abs within the twin's plus half a bf16 ulp). The old test compared with an fp32 reference on the
    UNROUNDED inputs with fixed tolerances: its error was mostly the inputs' own bf16 rounding (dw1 on an H200:
    549 of 786,432 elements off, max abs 0.18 > 0.05). The twin runs under bf16 autocast (bf16 GEMMs with fp32
    accumulation, the PyTorch path's arithmetic in a bf16 step): the kernels keep g, u and h in bf16 too, so against
    the fp32-arithmetic twin they are 1.6-2.2x worse in L2 by design, against this one a little better (the twin
    also rounds every GEMM output, e.g. each expert's down projection before the weighted sum).

    Measured on an H200 (torch 2.11, triton 3.6), T=300 case, ours vs twin, L2 / max-abs: out 0.67 / 0.020 vs
    1.00 / 0.030 (|ref| L2 235, max 4.6); dx 1.23 / 0.031 vs 1.50 / 0.032; dw1 11.4 / 0.26 vs 15.9 / 0.26 (|ref| L2
    3,900, max 37: about 2^-9 of the norm, the max within a bf16 ulp); dw3 11.6 / 0.22 vs 16.0 / 0.20; dw2 9.4 /
    0.17 vs 13.9 / 0.25; dweights 1.26 / 0.15 vs 1.71 / 0.16. T=1: L2 ratios 0.74-0.87 (dx 1.01 on 128 elements,
    where only max-abs is compared: 0.0090 vs 0.0089 + half an ulp 0.0078).
    """
    for name, (ours, twin, ref) in moe_bf16_cases(T, H, I, E, k, empty, limit, "cuda").items():
        assert_no_worse_than_twin(ours, twin, ref, name + " bf16")


@needs_triton
def test_moe_bf16_comparison_runs_on_the_interpreter(force_triton):
    """The comparison of test_moe_ffn_bf16_cuda, exercised on the CPU: the kernels in fp32 under the interpreter on
    the bf16 inputs, rounded once to bf16, against the twin in bf16 (CPU autocast) and the float64 reference."""
    if torch.cuda.is_available():
        pytest.skip("test_moe_ffn_bf16_cuda runs the real thing here")
    for name, (ours, twin, ref) in moe_bf16_cases(37, 24, 40, 5, 2, 3, 0.5, "cpu", torch.float32).items():
        assert_no_worse_than_twin(ours, twin, ref, name + " (interpreted fp32, rounded)")


@needs_cuda
def test_moe_forward_has_no_host_sync(force_triton):
    """The forward never copies per-expert counts to the host (CUDA sync debug mode raises if it does)."""
    x, w1, w3, w2, indices, weights = (t.detach() for t in _problem(300, 128, 64, 32, 6, 7, torch.bfloat16, "cuda"))
    moe_ffn(x, w1, w3, w2, indices, weights, 7.0)  # compile outside the checked region
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        moe_ffn(x, w1, w3, w2, indices, weights, 7.0)
    finally:
        torch.cuda.set_sync_debug_mode(prev)
