"""Indexer training (attention.md §2.4, tests §6.12): KL value and gradient, sparse restriction, the two stages'
gradient isolation on a real DSA model. fp32; tolerances 1e-6 absolute on losses and gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multimodal.backbone.transformer import Transformer
from multimodal.config import AttentionConfig, BackboneConfig, HyperConfig, MoEConfig
from multimodal.training.indexer_loss import (attention_target, dsa_indexer_loss, dsa_layers, indexer_kl,
                                              set_indexer_stage)


def test_kl_is_zero_at_the_target_and_matches_the_formula():
    logits = torch.randn(2, 3, 5)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    p = torch.softmax(logits, -1)
    assert indexer_kl(logits, p, mask).abs() < 1e-6
    target = torch.softmax(torch.randn(2, 3, 5), -1)
    expected = (target * (target.log() - torch.log_softmax(logits, -1))).sum(-1).mean()
    torch.testing.assert_close(indexer_kl(logits, target, mask), expected)


def test_gradient_is_softmax_minus_target():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    causal = torch.ones(6, 6).tril().bool()[:4].expand(2, -1, -1)                   # rows see 1..4 keys
    target = torch.rand(2, 4, 6) * causal
    target = target / target.sum(-1, keepdim=True)
    indexer_kl(logits, target, causal).backward()
    q = torch.softmax(logits.detach().masked_fill(~causal, float("-inf")), -1)
    torch.testing.assert_close(logits.grad, (q - target) / 8, atol=1e-6, rtol=0)     # 8 query rows


def test_sparse_loss_touches_only_selected_columns():
    logits = torch.randn(1, 3, 8, requires_grad=True)
    selected = torch.zeros(1, 3, 8, dtype=torch.bool)
    selected[..., [1, 4, 6]] = True
    target = torch.softmax(torch.randn(1, 3, 8), -1)
    indexer_kl(logits, target, selected).backward()
    assert (logits.grad[~selected] == 0).all() and (logits.grad[selected] != 0).all()
    ps = target * selected
    ps = ps / ps.sum(-1, keepdim=True)
    q = torch.softmax(logits.detach().masked_fill(~selected, float("-inf")), -1)
    torch.testing.assert_close(logits.grad, (q - ps) / 3, atol=1e-6, rtol=0)


def test_attention_target_sums_heads_and_normalises():
    probs = torch.softmax(torch.randn(2, 4, 3, 5), -1)
    target = attention_target(probs)
    torch.testing.assert_close(target, probs.sum(1) / 4)
    torch.testing.assert_close(target.sum(-1), torch.ones(2, 3))


def dsa_model() -> Transformer:
    torch.manual_seed(0)
    cfg = BackboneConfig(
        vocab_size=48, hidden_size=32, num_hidden_layers=2, layer_types=["dsa"] * 2, mlp_layer_types=["dense"] * 2,
        num_nextn_predict_layers=0,
        attention=AttentionConfig(num_attention_heads=4, head_dim=16, q_lora_rank=16, kv_lora_rank=16,
                                  qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, o_groups=1, o_lora_rank=1,
                                  index_n_heads=4, index_head_dim=16, index_topk=3),
        moe=MoEConfig(n_routed_experts=2, num_experts_per_tok=1, moe_intermediate_size=8, intermediate_size=32,
                      swiglu_limit=None),
        hyper=HyperConfig(enabled=False, hc_mult=1))
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model


def lm_loss(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def grads(model: Transformer, indexer: bool) -> list[torch.Tensor | None]:
    return [p.grad for n, p in model.named_parameters() if (".indexer." in n) == indexer]


def test_dense_warmup_trains_only_the_indexer_towards_dense_attention():
    model = dsa_model()
    set_indexer_stage(model, "dense_warmup")
    ids = torch.randint(0, 48, (2, 10))
    model(ids)
    for layer in dsa_layers(model):                                                  # attention is dense
        assert (layer.last_probs[:, :, -1] > 0).sum(-1).min() == 10
    loss = dsa_indexer_loss(model)
    loss.backward()
    assert all(g is None for g in grads(model, indexer=False))                       # the rest is frozen
    assert all(g is not None and g.abs().sum() > 0 for g in grads(model, indexer=True))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = loss.item()
    for _ in range(30):
        opt.zero_grad()
        model(ids)
        loss = dsa_indexer_loss(model)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_sparse_stage_isolates_gradients():
    model = dsa_model()
    set_indexer_stage(model, "sparse")
    ids = torch.randint(0, 48, (2, 10))
    lm = lm_loss(model, ids)
    for layer in dsa_layers(model):                                                  # attention is sparse: <= 3 keys
        assert (layer.last_probs > 0).sum(-1).max() == 3
    idx_loss = dsa_indexer_loss(model)
    idx_loss.backward(retain_graph=True)
    assert all(g is None or (g == 0).all() for g in grads(model, indexer=False))     # L_I reaches only the indexer
    assert all(g is not None and g.abs().sum() > 0 for g in grads(model, indexer=True))
    model.zero_grad()
    lm.backward()
    assert all(g is None or (g == 0).all() for g in grads(model, indexer=True))      # LM loss never reaches it
    assert any(g is not None and g.abs().sum() > 0 for g in grads(model, indexer=False))
