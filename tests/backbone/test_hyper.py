"""mHC: Sinkhorn gives (near) doubly-stochastic mixing, and n = 1 with a zero projection is the plain residual."""

from __future__ import annotations

import torch

from multimodal.backbone.hyper import HyperConnection, sinkhorn
from multimodal.config import HyperConfig, preset

from .random_model import random_model


def test_sinkhorn_rows_and_columns_sum_to_one():
    m = torch.rand(5, 4, 4) * 3 + 0.01
    out = sinkhorn(m, iters=20, eps=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(5, 4), atol=1e-3)
    assert torch.allclose(out.sum(-2), torch.ones(5, 4), atol=1e-5)   # the last step normalises columns


def test_mixing_matrix_is_non_expansive():
    hc = HyperConnection(8, HyperConfig(hc_mult=4), 1e-6)
    with torch.no_grad():
        hc.fn.normal_(0, 0.05)      # mixing logits of order 1, as in a trained model
        hc.base.normal_(0, 1.0)
    _, comb, _ = hc(torch.randn(2, 3, 4, 8))
    # a doubly-stochastic matrix has spectral norm <= 1 (up to Sinkhorn's residual)
    assert torch.linalg.matrix_norm(comb, ord=2).max() <= 1.0 + 1e-3


def test_n1_zero_projection_equals_plain_prenorm_residual():
    cfg = preset("debug").replace(num_nextn_predict_layers=0, hyper={"hc_mult": 1, "enabled": True},
                                  mlp_layer_types=["moe"] * 3)
    mhc = random_model(cfg, seed=3)
    plain = random_model(cfg.replace(hyper={"enabled": False}), seed=3)
    state = {k: v for k, v in mhc.state_dict().items() if "hc_" not in k}
    plain.load_state_dict(state)
    with torch.no_grad():
        for name, p in mhc.named_parameters():      # zero projection, zero bias, unit scales
            if ".fn" in name or ".base" in name:
                p.zero_()
            if ".scale" in name and "hc_" in name:
                p.fill_(1.0)
        ids = torch.randint(0, cfg.vocab_size, (2, 17))
        a, b = mhc(ids).logits, plain(ids).logits
    # pre = sigmoid(0) + eps is removed by the block's RMSNorm, post = 2 sigmoid(0) = 1, comb = 1 / (1 + eps)
    assert (a - b).abs().max() < 1e-4 * b.abs().max()
