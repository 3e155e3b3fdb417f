"""moe_ffn: Triton kernel vs the per-expert-loop reference, forward and all five gradients.

fp32 on the CPU interpreter (or CUDA with TF32 off): atol 1e-4, rtol 1e-4. bf16 on CUDA: compared to
the fp32 reference with atol/rtol 2e-2 (``shared/reference/attention.md`` §6 tolerances).
"""

from __future__ import annotations

import pytest
import torch

from multimodal.kernels.moe import moe_ffn
from multimodal.kernels.moe.naive import naive_moe_ffn

from .conftest import KERNEL_DEVICE, assert_close, needs_cuda, needs_triton


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


@needs_cuda
@pytest.mark.parametrize("T,H,I,E,k,empty,limit", [(300, 256, 192, 16, 6, 5, 7.0), (1, 128, 64, 8, 2, None, None)])
def test_moe_ffn_bf16_cuda(force_triton, T, H, I, E, k, empty, limit):
    tensors = _problem(T, H, I, E, k, empty, torch.float32, "cpu")
    ref, ref_grads = _run(naive_moe_ffn, tensors, limit)
    bf = [t.detach().to("cuda", torch.bfloat16 if t.is_floating_point() else t.dtype).requires_grad_(t.is_floating_point())
          for t in tensors]
    out, grads = _run(moe_ffn, bf, limit)
    assert_close(out.cpu(), ref, 2e-2, 2e-2, "out bf16")
    for name, g, rg in zip(("dx", "dw1", "dw3", "dw2", "dweights"), grads, ref_grads):
        assert_close(g.cpu(), rg, 5e-2, 5e-2, name + " bf16")


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
