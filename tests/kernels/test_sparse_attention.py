"""sparse_mqa: Triton kernel vs the gather reference, forward and gradients for q, kv and sink.

fp32 on the CPU interpreter (or CUDA with TF32 off): atol 1e-4, rtol 1e-4. bf16 on CUDA: atol/rtol 2e-2
against the fp32 reference (``shared/reference/attention.md`` §6, test 9).
"""

from __future__ import annotations

import pytest
import torch

from multimodal.kernels.sparse_attention import naive_sparse_mqa, sparse_mqa
from multimodal.kernels.sparse_attention.op import SparseMQAFunction

from .conftest import KERNEL_DEVICE, assert_close, needs_cuda, needs_triton


def _problem(B, S, H, D, N, K, with_sink, device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, S, H, D, generator=gen)
    kv = torch.randn(B, N, D, generator=gen)
    indices = torch.randint(-1, N, (B, S, K), generator=gen)  # -1 = invalid, duplicates allowed
    indices[0, 0] = -1  # one all-invalid row
    if K > 1:
        indices[-1, -1, : K // 2] = indices[-1, -1, K // 2]  # a row that repeats one entry
    sink = torch.randn(H, generator=gen) if with_sink else None
    tensors = [q.to(device, dtype).requires_grad_(), kv.to(device, dtype).requires_grad_(), indices.to(device)]
    if sink is not None:
        sink = sink.to(device).requires_grad_()
    return tensors, sink


def _run(fn, q, kv, indices, scale, sink):
    out = fn(q, kv, indices, scale, sink)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out)
    inputs = [q, kv] + ([sink] if sink is not None else [])
    return out, torch.autograd.grad(out, inputs, dout)


CASES = [
    # B, S, H, D, N, K, sink
    (2, 5, 3, 20, 13, 7, False),
    (2, 5, 3, 20, 13, 7, True),
    (1, 3, 17, 24, 9, 1, True),  # K = 1, heads beyond one head block
    (1, 2, 2, 512, 40, 37, True),  # V4 head dim 512, K not a multiple of the block
]


@needs_triton
@pytest.mark.parametrize("B,S,H,D,N,K,with_sink", CASES)
def test_sparse_mqa_matches_reference_fp32(force_triton, B, S, H, D, N, K, with_sink):
    (q, kv, indices), sink = _problem(B, S, H, D, N, K, with_sink, KERNEL_DEVICE)
    scale = D ** -0.5
    out, grads = _run(sparse_mqa, q, kv, indices, scale, sink)
    cpu = lambda t: None if t is None else t.detach().cpu().requires_grad_()  # noqa: E731
    ref, ref_grads = _run(naive_sparse_mqa, cpu(q), cpu(kv), indices.cpu(), scale, cpu(sink))
    assert_close(out.cpu(), ref, 1e-4, 1e-4, "out")
    for name, g, rg in zip(("dq", "dkv", "dsink"), grads, ref_grads):
        assert_close(g.cpu(), rg, 1e-4, 1e-4, name)
    assert torch.all(out[0, 0] == 0) and torch.all(grads[0][0, 0] == 0), "all-invalid row must give 0"
    assert torch.isfinite(out).all()


@needs_triton
@pytest.mark.parametrize("with_sink", [False, True])
def test_split_k_forward_matches_reference(with_sink):
    """The decode path (index list split across programs + LSE combine) gives the same out and grads.

    K = 37 in splits of 16 slots: three splits, one of them all-invalid in the first row.
    """
    (q, kv, indices), sink = _problem(2, 3, 5, 24, 11, 37, with_sink, KERNEL_DEVICE)
    indices[1, 0, 16:32] = -1  # an empty middle split in a non-empty row
    scale = 0.2
    split = lambda q_, kv_, idx_, sc_, sk_: SparseMQAFunction.apply(q_, kv_, idx_, sc_, sk_, 3)  # noqa: E731
    out, grads = _run(split, q, kv, indices, scale, sink)
    cpu = lambda t: None if t is None else t.detach().cpu().requires_grad_()  # noqa: E731
    ref, ref_grads = _run(naive_sparse_mqa, cpu(q), cpu(kv), indices.cpu(), scale, cpu(sink))
    assert_close(out.cpu(), ref, 1e-4, 1e-4, "out (split)")
    for name, g, rg in zip(("dq", "dkv", "dsink"), grads, ref_grads):
        assert_close(g.cpu(), rg, 1e-4, 1e-4, name + " (split)")
    assert torch.all(out[0, 0] == 0)


def test_reference_semantics():
    """Sink lowers the total probability below 1; invalid slots contribute nothing; dense limit."""
    gen = torch.Generator().manual_seed(3)
    q, kv = torch.randn(1, 1, 2, 8, generator=gen), torch.randn(1, 4, 8, generator=gen)
    full = torch.arange(4).view(1, 1, 4)
    dense = torch.softmax(q[0, 0] @ kv[0].T * 0.3, dim=-1) @ kv[0]  # [H, D]
    assert_close(naive_sparse_mqa(q, kv, full, 0.3)[0, 0], dense, 1e-6, 1e-6, "dense limit")
    padded = torch.tensor([[[3, -1, 0, 1, -1, 2]]])
    assert_close(naive_sparse_mqa(q, kv, padded, 0.3), naive_sparse_mqa(q, kv, full, 0.3), 1e-6, 1e-6, "padding")
    ones = torch.ones(1, 4, 8)  # value 1 everywhere: the output is the total probability mass
    mass = naive_sparse_mqa(q, ones, full, 0.3, sink=torch.tensor([0.0, 5.0]))[0, 0, :, 0]
    assert torch.all(mass < 1) and mass[1] < mass[0]
    assert torch.all(naive_sparse_mqa(q, kv, torch.full((1, 1, 3), -1), 0.3) == 0)


@needs_cuda
@pytest.mark.parametrize("B,S,H,D,N,K,with_sink", [(2, 64, 16, 512, 300, 640, True), (1, 7, 64, 128, 50, 33, False)])
def test_sparse_mqa_bf16_cuda(force_triton, B, S, H, D, N, K, with_sink):
    (q, kv, indices), sink = _problem(B, S, H, D, N, K, with_sink, "cpu")
    scale = D ** -0.5
    ref, ref_grads = _run(naive_sparse_mqa, q, kv, indices, scale, sink)
    bf = lambda t: t.detach().to("cuda", torch.bfloat16).requires_grad_()  # noqa: E731
    s_cuda = sink.detach().cuda().requires_grad_() if sink is not None else None
    out, grads = _run(sparse_mqa, bf(q), bf(kv), indices.cuda(), scale, s_cuda)
    assert_close(out.cpu(), ref, 2e-2, 2e-2, "out bf16")
    for name, g, rg in zip(("dq", "dkv", "dsink"), grads, ref_grads):
        assert_close(g.cpu(), rg, 5e-2, 5e-2, name + " bf16")
