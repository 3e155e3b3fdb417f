"""DeepSeekMoE routing and expert computation (attention.md §6 test 17)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multimodal.backbone.moe import MoE, Router, grouped_experts, swiglu
from multimodal.config import MoEConfig


def _router(**kw) -> Router:
    cfg = MoEConfig(**{**dict(n_routed_experts=16, num_experts_per_tok=4, scoring_func="sigmoid",
                               routed_scaling_factor=2.5, n_group=4, topk_group=2, swiglu_limit=None), **kw})
    torch.manual_seed(0)
    return Router(8, cfg)


def test_weights_sum_to_route_scale_and_bias_only_changes_the_choice():
    r = _router()
    x = torch.randn(32, 8)
    w, idx, scores = r(x)
    assert torch.allclose(w.sum(-1), torch.full((32,), 2.5), atol=1e-5)
    r.bias.copy_(torch.linspace(-1, 1, 16))
    w2, idx2, scores2 = r(x)
    assert not torch.equal(idx.sort(-1).values, idx2.sort(-1).values)          # the bias moved some choices
    normed = scores2.gather(1, idx2) / scores2.gather(1, idx2).sum(-1, keepdim=True) * 2.5
    assert torch.allclose(w2, normed, atol=1e-6)                                # weights from unbiased scores


def test_group_limited_routing_stays_inside_kept_groups():
    r = _router()
    x = torch.randn(64, 8)
    _, idx, scores = r(x)
    groups = (scores.view(64, 4, 4).topk(2, -1).values.sum(-1)).topk(2, -1).indices    # [T, topk_group]
    assert all(set((idx[t] // 4).tolist()) <= set(groups[t].tolist()) for t in range(64))


@pytest.mark.parametrize("i, grad", [(6, False), (8, False), (8, True)])   # loop, grouped GEMM, loop (autograd)
def test_grouped_experts_equal_per_token_loop_with_clamp(i, grad):
    torch.manual_seed(1)
    e, d, t, k, lim = 5, 4, 9, 2, 0.5
    w1, w3, w2 = torch.randn(e, i, d), torch.randn(e, i, d), torch.randn(e, d, i)
    x = torch.randn(t, d)
    idx = torch.randint(0, e - 1, (t, k))       # expert e-1 receives no token
    wts = torch.rand(t, k)
    with torch.set_grad_enabled(grad):
        out = grouped_experts(x.requires_grad_(grad), w1, w3, w2, idx, wts, lim)
    ref = torch.stack([sum(wts[n, j] * (w2[idx[n, j]] @ (F.silu((w1[idx[n, j]] @ x[n]).clamp(max=lim))
                                                               * (w3[idx[n, j]] @ x[n]).clamp(-lim, lim)))
                           for j in range(k)) for n in range(t)])
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(swiglu(torch.tensor([20.0]), torch.tensor([-20.0]), 10.0), F.silu(torch.tensor([10.0])) * -10)


def test_grouped_gemm_under_cpu_bf16_autocast_takes_the_activations_dtype():
    """Inference under bf16 autocast (what a bf16 training run's evaluation does): torch's grouped GEMM is outside
    autocast, so fp32 expert weights meet bf16 tokens; the result equals the fp32 loop within bf16 precision."""
    torch.manual_seed(2)
    e, d, i, t, k = 4, 16, 16, 12, 2
    w1, w3, w2 = torch.randn(e, i, d), torch.randn(e, i, d), torch.randn(e, d, i)
    x, idx, wts = torch.randn(t, d), torch.randint(0, e, (t, k)), torch.rand(t, k)
    ref = grouped_experts(x, w1, w3, w2, idx, wts, None)
    with torch.no_grad():
        out = grouped_experts(x.bfloat16(), w1, w3, w2, idx, wts, None)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1 * float(ref.abs().max()), rtol=0.05)


def test_hash_routing_follows_the_token_table():
    cfg = MoEConfig(n_routed_experts=6, num_experts_per_tok=2, moe_intermediate_size=4)
    moe = MoE(8, cfg, hashed=True, vocab_size=10)
    ids = torch.tensor([[3, 3, 7]])
    moe(torch.randn(1, 3, 8), ids)
    expected = torch.bincount(moe.gate.tid2eid[ids.flatten()].flatten(), minlength=6)
    assert torch.equal(moe.last_load, expected)
