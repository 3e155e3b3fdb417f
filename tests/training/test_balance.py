"""Aux-loss-free bias update and the sequence-wise balance loss (V3 report §2.1.2; attention.md §1.7)."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone.moe import MoE, Router
from multimodal.config import MoEConfig
from multimodal.training.balance import moe_balance_loss, sequence_balance_loss, update_bias_, update_router_biases_


def cfg(**kw) -> MoEConfig:
    base = dict(n_routed_experts=4, num_experts_per_tok=1, moe_intermediate_size=8, scoring_func="sigmoid",
                bias_update_speed=0.01)
    base.update(kw)
    return MoEConfig(**base)


def test_bias_moves_against_load():
    router = Router(8, cfg())
    delta = update_bias_(router, torch.tensor([10, 2, 4, 4]), gamma=0.01)           # mean load 5
    torch.testing.assert_close(delta, torch.tensor([-0.01, 0.01, 0.01, 0.01]))       # over, then under x3
    delta = update_bias_(router, torch.tensor([3, 3, 3, 3]), gamma=0.01)            # balanced: no change
    torch.testing.assert_close(delta, torch.zeros(4))
    torch.testing.assert_close(router.bias, torch.tensor([-0.01, 0.01, 0.01, 0.01]))


def test_bias_updates_balance_a_skewed_router():
    """Sign updates with gamma = 0.005 take a router sending 94% of tokens to one expert to within 10% of uniform."""
    torch.manual_seed(0)
    router = Router(8, cfg())
    with torch.no_grad():
        router.weight.normal_(0, 0.3)
        router.weight[0] += 0.5
    x = torch.randn(400, 8) + 1.0

    def load() -> torch.Tensor:
        return torch.bincount(router(x)[1].flatten(), minlength=4)

    assert load().max() > 350
    for _ in range(200):
        update_bias_(router, load(), gamma=0.005)
    assert (load() - 100).abs().max() <= 10


def test_update_router_biases_uses_each_layers_last_load():
    torch.manual_seed(1)
    moe = MoE(8, cfg(), hashed=False, vocab_size=1)
    moe(torch.randn(1, 50, 8))
    load = moe.last_load.float()
    assert update_router_biases_(moe) == 1
    torch.testing.assert_close(moe.gate.bias, 0.01 * torch.sign(load.mean() - load))


def test_balance_loss_values():
    e, k = 4, 2
    uniform = torch.ones(1, 8, e)
    idx = torch.tensor([[0, 1], [2, 3]] * 4).view(1, 8, k)                          # every expert 4 of 16 slots
    assert sequence_balance_loss(uniform, idx, e, alpha=0.1).item() == pytest.approx(0.1)
    scores = torch.tensor([[[3.0, 1.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]]])           # T = 2, K = 1
    idx = torch.tensor([[[0], [0]]])
    # f = [4 * 2 / 2, 0, 0, 0] = [4, 0, 0, 0]; P_0 = (0.75 + 0.25) / 2 = 0.5  ->  L = alpha * 2
    assert sequence_balance_loss(scores, idx, e, alpha=1.0).item() == pytest.approx(2.0)


def test_balance_loss_on_moe_layers_has_router_gradient():
    torch.manual_seed(1)
    moe = MoE(8, cfg(num_experts_per_tok=2), hashed=False, vocab_size=1)
    x = torch.randn(3, 5, 8)
    moe(x)
    loss = moe_balance_loss(moe, batch_size=3, alpha=1e-2)
    loss.backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert moe.experts.w1.grad is None                                               # only the router learns from it
