"""mHC: Triton kernels vs the reference, and the reference vs transformers' DeepseekV4HyperConnection.

fp32 on the CPU interpreter (or CUDA with TF32 off): atol/rtol 1e-4 for outputs and gradients
(Sinkhorn runs 20 iterations of divisions; gradients through them agree to ~1e-5 in fp32).
bf16 on CUDA: 2e-2 against the fp32 reference.
"""

from __future__ import annotations

import pytest
import torch

from multimodal.kernels.mhc import mhc_post, mhc_pre, naive_mhc_post, naive_mhc_pre

from .conftest import KERNEL_DEVICE, assert_close, needs_cuda, needs_triton


def _params(n: int, D: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    W = (2 + n) * n
    fn = torch.randn(W, n * D, generator=gen) * 0.5
    base = torch.randn(W, generator=gen) * 0.5
    scale = torch.rand(3, generator=gen) + 0.5
    return fn, base, scale


def _leaf(t, device, dtype=None):
    return t.detach().to(device, dtype or t.dtype).requires_grad_()


PRE_CASES = [
    # B, S, n, D, sinkhorn_iters
    (2, 5, 4, 24, 20),  # V4: n = 4, 20 iterations
    (1, 7, 3, 20, 3),  # n not a power of two
    (1, 1, 1, 16, 1),  # n = 1: a plain residual, one iteration
]


@needs_triton
@pytest.mark.parametrize("B,S,n,D,iters", PRE_CASES)
def test_mhc_pre_matches_reference_fp32(force_triton, B, S, n, D, iters):
    fn, base, scale = _params(n, D)
    streams = torch.randn(B, S, n, D, generator=torch.Generator().manual_seed(1))
    inputs = [_leaf(t, KERNEL_DEVICE) for t in (streams, fn, base, scale)]
    ref_inputs = [_leaf(t, "cpu") for t in (streams, fn, base, scale)]
    outs = mhc_pre(*inputs, iters, 1e-6, 1e-6)
    refs = naive_mhc_pre(*ref_inputs, iters, 1e-6, 1e-6)
    gen = torch.Generator().manual_seed(2)
    cots = [torch.randn(r.shape, generator=gen) for r in refs]
    grads = torch.autograd.grad(outs, inputs, [c.to(KERNEL_DEVICE) for c in cots])
    ref_grads = torch.autograd.grad(refs, ref_inputs, cots)
    for name, o, r in zip(("post", "comb", "collapsed"), outs, refs):
        assert_close(o.cpu(), r, 1e-4, 1e-4, name)
    for name, g, r in zip(("dstreams", "dfn", "dbase", "dscale"), grads, ref_grads):
        assert_close(g.cpu(), r, 1e-4, 1e-4, name)


@needs_triton
@pytest.mark.parametrize("B,S,n,D", [(2, 5, 4, 24), (1, 3, 3, 40), (1, 1, 1, 16)])
def test_mhc_post_matches_reference_fp32(force_triton, B, S, n, D):
    gen = torch.Generator().manual_seed(3)
    tensors = [torch.randn(B, S, D, generator=gen), torch.randn(B, S, n, D, generator=gen),
               torch.rand(B, S, n, generator=gen) * 2, torch.rand(B, S, n, n, generator=gen)]
    inputs = [_leaf(t, KERNEL_DEVICE) for t in tensors]
    ref_inputs = [_leaf(t, "cpu") for t in tensors]
    out = mhc_post(*inputs)
    ref = naive_mhc_post(*ref_inputs)
    dnew = torch.randn(ref.shape, generator=gen)
    grads = torch.autograd.grad(out, inputs, dnew.to(KERNEL_DEVICE))
    ref_grads = torch.autograd.grad(ref, ref_inputs, dnew)
    assert_close(out.cpu(), ref, 1e-5, 1e-5, "new streams")
    for name, g, r in zip(("dblock_out", "dstreams", "dpost", "dcomb"), grads, ref_grads):
        assert_close(g.cpu(), r, 1e-4, 1e-4, name)


def test_reference_matches_transformers_hyper_connection():
    """naive_mhc_pre is exactly transformers' DeepseekV4HyperConnection (the checkpoint convention)."""
    tf = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
    cfg = tf.DeepseekV4Config(hidden_size=32, hc_mult=4, hc_sinkhorn_iters=20, hc_eps=1e-6, rms_norm_eps=1e-6)
    module = tf.DeepseekV4HyperConnection(cfg)
    fn, base, scale = _params(4, 32)
    with torch.no_grad():
        module.fn.copy_(fn), module.base.copy_(base), module.scale.copy_(scale)
        streams = torch.randn(2, 3, 4, 32, generator=torch.Generator().manual_seed(4))
        expected = module(streams)
        got = naive_mhc_pre(streams, fn, base, scale, 20, 1e-6, 1e-6)
    for name, g, e in zip(("post", "comb", "collapsed"), got, expected):
        assert_close(g, e, 1e-6, 1e-6, name)


def test_reference_properties():
    """Doubly stochastic comb (columns exact, rows to 1e-3), ranges, n = 1 residual, post mixing = comb^T X."""
    fn, base, scale = _params(4, 16)
    streams = torch.randn(1, 6, 4, 16, generator=torch.Generator().manual_seed(5))
    post, comb, collapsed = naive_mhc_pre(streams, fn * 0.1, base * 0.1, scale, 20, 1e-6, 1e-6)
    assert_close(comb.sum(-2), torch.ones(1, 6, 4), 1e-5, 0, "column sums")
    assert_close(comb.sum(-1), torch.ones(1, 6, 4), 1e-3, 0, "row sums")
    assert torch.all(comb >= 0) and torch.all((post > 0) & (post < 2))
    f1 = torch.zeros(3, 16)
    p1, c1, col1 = naive_mhc_pre(streams[:, :, :1], f1, torch.zeros(3), torch.ones(3), 20, 1e-6, 1e-6)
    assert_close(p1, torch.ones_like(p1), 1e-6, 0, "n=1 post")
    assert_close(c1, torch.ones_like(c1), 1e-5, 0, "n=1 comb")
    block_out = torch.randn(1, 6, 16)
    new = naive_mhc_post(block_out, streams, post, comb)
    manual = post[..., None] * block_out[:, :, None] + comb.transpose(-1, -2) @ streams
    assert_close(new, manual, 1e-5, 1e-5, "post formula")


@needs_cuda
def test_mhc_bf16_cuda(force_triton):
    fn, base, scale = _params(4, 256)
    streams = torch.randn(2, 100, 4, 256, generator=torch.Generator().manual_seed(6))
    refs = naive_mhc_pre(streams, fn, base, scale, 20, 1e-6, 1e-6)
    outs = mhc_pre(streams.to("cuda", torch.bfloat16), fn.cuda(), base.cuda(), scale.cuda(), 20, 1e-6, 1e-6)
    for name, o, r in zip(("post", "comb", "collapsed"), outs, refs):
        assert_close(o.cpu(), r, 2e-2, 2e-2, name + " bf16")
    block_out = torch.randn(2, 100, 256)
    new = mhc_post(block_out.to("cuda", torch.bfloat16), streams.to("cuda", torch.bfloat16), refs[0].cuda(), refs[1].cuda())
    assert_close(new.cpu(), naive_mhc_post(block_out, streams, refs[0], refs[1]), 3e-2, 2e-2, "post bf16")
