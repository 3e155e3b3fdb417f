"""engram_gather: fused n-gram hashing + table gather (Triton) vs the reference, and the reference vs the
backbone's own two-step path (``Engram.addresses`` + ``Engram.fetch``, ``hash_ngrams``).

The forward is a gather of integer-addressed rows, so every comparison of outputs is exact (``torch.equal``),
also for int64 products that overflow and wrap. The table gradient is a scatter-add: exact against the old
path; fp32 atol/rtol 1e-6 against the Triton atomics (CPU interpreter, or CUDA where the order of the
additions into a shared row is not fixed). bf16 on CUDA: the gather is exact, the gradient within 1e-2.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from multimodal.backbone.engram import Engram, hash_ngrams
from multimodal.backbone.transformer import Transformer
from multimodal.config import EngramConfig, preset
from multimodal.kernels import engram_gather
from multimodal.kernels.engram import naive_engram_gather, naive_ngram_rows

from .conftest import KERNEL_DEVICE, assert_close, needs_cuda, needs_triton

#: multipliers near 2^62: every product x * m overflows int64, and the XOR of wrapped products is often negative
BIG_MULTIPLIERS = [2 ** 62 + 1, 2 ** 61 + 3, 2 ** 60 + 5, 2 ** 62 + 2 ** 40 + 7]


def _primes(count: int, start: int) -> list[int]:
    """The first ``count`` primes >= ``start``."""
    out, p = [], start
    while len(out) < count:
        if all(p % d for d in range(2, int(p ** 0.5) + 1)):
            out.append(p)
        p += 1
    return out


def _problem(B, S, N, K, Dh, vocab, device, dtype=torch.float32, seed=0, first_prime=5):
    """ids [B, S], history [B, N-1], multipliers [N], primes [N-1, K] (small: many shared rows), offsets, table."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, S), generator=gen)
    history = torch.randint(0, vocab, (B, N - 1), generator=gen)
    multipliers = torch.tensor(BIG_MULTIPLIERS[:N])
    primes = torch.tensor(_primes((N - 1) * K, first_prime)).view(N - 1, K)
    flat = primes.flatten()
    offsets = torch.cumsum(flat, 0) - flat
    table = torch.randn(int(flat.sum()), Dh, generator=gen)
    ints = [t.to(device) for t in (ids, history, multipliers, primes, offsets)]
    return (*ints, table.to(device, dtype).requires_grad_())


def _run(fn, args, seed=1, grad_dtype=None):
    out = fn(*args)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(grad_dtype or out.dtype).to(out)
    (dtable,) = torch.autograd.grad(out, [args[-1]], dout)
    return out, dtable


def _config(layer: int = 1):
    return preset("debug").replace(vocab_size=1000, engram=EngramConfig(layers=[layer], table_size=1009, n_heads=2,
                                                                        d_mem=16, seed=7), hyper={"enabled": False})


def _setup(e: Engram) -> Engram:
    e.set_compression(torch.randint(0, 300, (1000,), generator=torch.Generator().manual_seed(0)))  # not identity
    e.pad_id = 3
    return e


def _engram(layer: int = 1, seed: int = 0) -> Engram:
    torch.manual_seed(seed)
    return _setup(Engram(_config(layer), layer))


# ------------------------------------------------------------------------------------------ reference == old path
def test_reference_hash_equals_hash_ngrams_with_overflow():
    gen = torch.Generator().manual_seed(0)
    for N in (2, 3, 4):
        ids = torch.randint(0, 2 ** 40, (3, 21), generator=gen)  # large ids: products wrap many times over
        hist = torch.randint(0, 2 ** 40, (3, N - 1), generator=gen)
        mult = torch.tensor(BIG_MULTIPLIERS[:N])
        primes = torch.tensor([[1009, 1013, 1019], [1021, 1031, 1033], [1039, 1049, 1051]])[: N - 1]
        assert torch.equal(naive_ngram_rows(ids, hist, mult, primes), hash_ngrams(ids, hist, mult, primes))


@pytest.mark.parametrize("with_history", [False, True])
def test_reference_equals_addresses_then_fetch(with_history):
    """naive_engram_gather == Engram.fetch(Engram.addresses(ids)): outputs and table gradients, exactly."""
    e = _engram()
    ids = torch.randint(0, 1000, (2, 11), generator=torch.Generator().manual_seed(1))
    state = SimpleNamespace(ids=e.compress[torch.randint(0, 1000, (2, 2))]) if with_history else None
    old = e.fetch(e.addresses(ids, state))
    history = state.ids if with_history else e.compress[torch.full((2, 2), e.pad_id)]
    table = e.table.weight.detach().clone().requires_grad_()
    new = naive_engram_gather(e.compress[ids], history, e.multipliers, e.primes, e.offsets, table)
    assert torch.equal(new, old)
    dout = torch.randn(old.shape, generator=torch.Generator().manual_seed(2))
    (d_old,) = torch.autograd.grad(old, [e.table.weight], dout)
    (d_new,) = torch.autograd.grad(new, [table], dout)
    assert torch.equal(d_new, d_old)


def test_lookup_equals_addresses_then_fetch(force_torch):
    e = _engram()
    ids = torch.randint(0, 1000, (3, 9), generator=torch.Generator().manual_seed(3))
    assert torch.equal(e.lookup(ids), e.fetch(e.addresses(ids)))
    state = SimpleNamespace(ids=e.compress[ids[:, -2:]])
    assert torch.equal(e.lookup(ids[:, :1], state), e.fetch(e.addresses(ids[:, :1], state)))


def test_bad_inputs_are_named():
    ids, hist, mult, primes, offs, table = _problem(2, 5, 3, 2, 4, 50, "cpu")
    with pytest.raises(ValueError, match="history"):
        engram_gather(ids, hist[:, :1], mult, primes, offs, table)
    with pytest.raises(ValueError, match="ids must be an integer tensor"):
        engram_gather(ids.float(), hist, mult, primes, offs, table)
    with pytest.raises(ValueError, match=r"ids \[B,S\]"):
        engram_gather(ids[0], hist, mult, primes, offs, table)


# ------------------------------------------------------------------------------------------ Triton == reference
CASES = [
    # B, S, N, K, Dh, vocab
    (2, 13, 3, 2, 5, 50),  # odd head width below one column block
    (3, 17, 4, 3, 37, 10 ** 6),  # N = 4, Dh above one column block (two BD steps), tokens not a multiple of BT
    (1, 1, 3, 2, 8, 50),  # one decoding step: every lag but 0 comes from the history
    (2, 7, 2, 1, 16, 3),  # N = 2, K = 1, three distinct ids: most rows are shared (atomics accumulate)
]


@needs_triton
@pytest.mark.parametrize("B,S,N,K,Dh,vocab", CASES)
def test_engram_gather_matches_reference_fp32(force_triton, B, S, N, K, Dh, vocab):
    args = _problem(B, S, N, K, Dh, vocab, KERNEL_DEVICE)
    ref_args = [t.detach().cpu().requires_grad_(t.requires_grad) for t in args]
    out, dtable = _run(engram_gather, args)
    ref, ref_dtable = _run(naive_engram_gather, ref_args)
    assert out.shape == (B, S, (N - 1) * K * Dh) and out.dtype == torch.float32
    assert torch.equal(out.cpu(), ref), "gathered rows differ"
    assert_close(dtable.cpu(), ref_dtable, 1e-6, 1e-6, "dtable")


@needs_triton
def test_engram_gather_strided_int32_inputs(force_triton):
    """Non-contiguous int32 ids and history (strides passed to the kernel), a non-contiguous output gradient."""
    ids, hist, mult, primes, offs, table = _problem(3, 10, 3, 2, 6, 1000, KERNEL_DEVICE)
    wide = torch.stack([ids, ids + 1], dim=-1).to(torch.int32)  # [B, S, 2]
    ids32, hist32 = wide[..., 0], hist.to(torch.int32).t().contiguous().t()
    assert not ids32.is_contiguous() and not hist32.is_contiguous()
    out = engram_gather(ids32, hist32, mult, primes, offs, table)
    ref_table = table.detach().cpu().requires_grad_()
    ref = naive_engram_gather(ids.cpu(), hist.cpu(), mult.cpu(), primes.cpu(), offs.cpu(), ref_table)
    assert torch.equal(out.cpu(), ref)
    dout = torch.randn(out.shape[0], out.shape[2], out.shape[1]).transpose(1, 2)  # [B, S, d] with odd strides
    (dtable,) = torch.autograd.grad(out, [table], dout.to(out.device))
    (ref_dtable,) = torch.autograd.grad(ref, [ref_table], dout)
    assert_close(dtable.cpu(), ref_dtable, 1e-6, 1e-6, "dtable")


@needs_triton
def test_engram_module_with_kernel_equals_pytorch_path(monkeypatch):
    """Engram.forward (lookup through engram_gather): prefill, then cached decoding steps; same output, same
    table gradient, whichever path gathers."""
    torch.manual_seed(0)
    cfg = _config()
    m = Transformer(cfg).to(KERNEL_DEVICE)
    e = _setup(m.layers[1].engram)
    with torch.no_grad():
        e.conv.weight.normal_(0, 0.3)  # a non-trivial (zero-initialised) conv, so the decoding state matters
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(4)).to(KERNEL_DEVICE)
    x = torch.randn(2, 9, cfg.hidden_size, generator=torch.Generator().manual_seed(5)).to(KERNEL_DEVICE)

    def run(policy):
        monkeypatch.setenv("MULTIMODAL_KERNELS", policy)
        e.zero_grad()
        layer_cache = SimpleNamespace(engram=None)
        outs = []
        for s0, s1 in ((0, 6), (6, 7), (7, 8), (8, 9)):
            ctx = m.make_context(2, s1 - s0, x.device, None, None, None, ids[:, s0:s1])
            outs.append(e(x[:, s0:s1], ctx, layer_cache))
        out = torch.cat(outs, dim=1)
        out.square().sum().backward()
        return out.detach(), e.table.weight.grad.clone()

    (ref, ref_grad), (out, grad) = run("torch"), run("triton")
    assert torch.equal(out, ref)
    assert_close(grad, ref_grad, 1e-6, 1e-6, "table gradient through the module")


@needs_cuda
def test_engram_gather_bf16_cuda(force_triton):
    args = _problem(4, 300, 3, 8, 64, 10 ** 5, "cuda", dtype=torch.bfloat16, first_prime=1009)
    ref_args = [t.detach().cpu().float().requires_grad_() if t.is_floating_point() else t.cpu() for t in args]
    out, dtable = _run(engram_gather, args)
    ref, ref_dtable = _run(naive_engram_gather, ref_args, grad_dtype=torch.bfloat16)  # the same bf16 gradient
    assert out.dtype == torch.bfloat16 and torch.equal(out.float().cpu(), ref)  # bf16 rows, gathered exactly
    assert_close(dtable.cpu(), ref_dtable, 1e-2, 1e-2, "bf16 dtable")  # fp32 atomics, one rounding to bf16
