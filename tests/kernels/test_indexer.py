"""indexer_topk: Triton score kernel + chunked top-k vs the reference.

Scores: fp32 atol/rtol 1e-4 (CPU interpreter or CUDA with TF32 off), and -inf at exactly the same
entries. Selection: the same valid/-1 pattern, the same sorted score values (tie-robust: ReLU makes
exact-zero ties common), and identical indices when scores are tie-free.
"""

from __future__ import annotations

import pytest
import torch

from multimodal.kernels.indexer import indexer_scores, indexer_topk, naive_indexer_scores, naive_indexer_topk

from .conftest import KERNEL_DEVICE, assert_close, needs_cuda, needs_triton


def _problem(B, S, Hi, Di, T, positive, device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, S, Hi, Di, generator=gen)
    k = torch.randn(B, T, Di, generator=gen)
    if positive:  # all dot products > 0: no ReLU ties, so the ranking is unique
        q, k = q.abs(), k.abs()
    w = torch.rand(B, S, Hi, generator=gen)
    offset = T - S  # causal with S queries at the end of T entries; early rows see fewer than topk
    threshold = (torch.arange(S) + offset + 1).clamp(min=0).expand(B, S).clone()
    threshold[0, 0] = 0  # a row with nothing visible
    return q.to(device, dtype), k.to(device, dtype), w.to(device, dtype), threshold.to(device)


def _check_selection(idx, ref_idx, ref_scores, exact):
    assert idx.shape == ref_idx.shape and idx.dtype == torch.int64
    assert torch.equal(idx == -1, ref_idx == -1), "different valid/-1 pattern"
    picked = torch.gather(ref_scores, -1, idx.clamp(min=0))
    expected = torch.gather(ref_scores, -1, ref_idx.clamp(min=0))
    valid = ref_idx >= 0
    assert_close(picked[valid], expected[valid], 1e-4, 1e-4, "selected scores")
    if exact:
        assert torch.equal(idx, ref_idx)


CASES = [
    # B, S, Hi, Di, T, topk, chunk, positive
    (2, 23, 3, 20, 37, 8, 5, False),
    (1, 9, 4, 128, 9, 4, 4, True),  # Di = 128 as in V3.2 / V4
    (1, 1, 2, 16, 1, 5, 8, True),  # T = 1, topk > T
    (2, 6, 2, 24, 50, 64, 3, True),  # topk > T: returns all T, padded rows -1
]


@needs_triton
@pytest.mark.parametrize("B,S,Hi,Di,T,topk,chunk,positive", CASES)
def test_indexer_matches_reference_fp32(force_triton, B, S, Hi, Di, T, topk, chunk, positive):
    q, k, w, thr = _problem(B, S, Hi, Di, T, positive, KERNEL_DEVICE)
    scale = Di ** -0.5
    scores = indexer_scores(q, k, w, thr, scale).cpu()
    ref_scores = naive_indexer_scores(q.cpu(), k.cpu(), w.cpu(), thr.cpu(), scale)
    assert torch.equal(torch.isinf(scores), torch.isinf(ref_scores)), "different excluded entries"
    finite = torch.isfinite(ref_scores)
    assert_close(scores[finite], ref_scores[finite], 1e-4, 1e-4, "scores")
    idx = indexer_topk(q, k, w, thr, topk, scale, chunk_size=chunk).cpu()
    ref_idx = naive_indexer_topk(q.cpu(), k.cpu(), w.cpu(), thr.cpu(), topk, scale, chunk_size=chunk)
    _check_selection(idx, ref_idx, ref_scores, exact=positive)
    assert torch.all(idx[0, 0] == -1), "a row with nothing visible selects nothing"


def test_reference_against_formula_and_chunking():
    q, k, w, thr = _problem(1, 7, 3, 8, 7, False, "cpu")
    s = naive_indexer_scores(q, k, w, thr, 0.5)
    b, i, t = 0, 6, 2
    manual = 0.5 * sum(w[b, i, h] * torch.relu(q[b, i, h] @ k[b, t]) for h in range(3))
    assert_close(s[b, i, t], manual, 1e-6, 1e-6, "formula")
    assert torch.all(torch.isinf(s[0, 3, 4:])) and torch.isfinite(s[0, 3, :4]).all()
    one = naive_indexer_topk(q, k, w, thr, 3, 0.5, chunk_size=100)
    many = naive_indexer_topk(q, k, w, thr, 3, 0.5, chunk_size=2)
    assert torch.equal(one, many)
    assert torch.all(one[0, 1, 2] == -1) and torch.all(one[0, 1, :2] >= 0)  # 2 visible entries < topk 3


@needs_cuda
def test_indexer_bf16_cuda(force_triton):
    q, k, w, thr = _problem(2, 300, 64, 128, 1000, True, "cpu")
    ref_scores = naive_indexer_scores(q, k, w, thr, 128 ** -0.5)
    bf = [t.to("cuda", torch.bfloat16) for t in (q, k, w)]
    scores = indexer_scores(*bf, thr.cuda(), 128 ** -0.5).cpu()
    finite = torch.isfinite(ref_scores)
    assert torch.equal(finite, torch.isfinite(scores))
    assert_close(scores[finite], ref_scores[finite], 5e-2, 2e-2, "bf16 scores")
    idx = indexer_topk(*bf, thr.cuda(), 64, 128 ** -0.5, chunk_size=128).cpu()
    ref_idx = naive_indexer_topk(q, k, w, thr, 64, 128 ** -0.5)
    recall = ((idx[..., :, None] == ref_idx[..., None, :]) & (ref_idx[..., None, :] >= 0)).any(-1).float()
    assert recall[ref_idx >= 0].mean() > 0.95  # bf16 may swap near-tied neighbours
