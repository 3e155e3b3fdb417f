"""DeepSeek Sparse Attention (attention.md §2, tests §6.8, 6.10, 6.11): the dense limit, masking semantics,
causality, the indexer formula and its half-split RoPE, cached decoding. fp32; tolerance 1e-5 relative."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone.dsa import DSA, apply_rope_half, topk_mask
from multimodal.backbone.mla import MLA
from multimodal.backbone.rope import RotaryEmbedding, apply_rope
from multimodal.backbone.transformer import Transformer
from multimodal.config import AttentionConfig, BackboneConfig, HyperConfig, MoEConfig


def dsa_config(topk: int, n: int = 2) -> BackboneConfig:
    return BackboneConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=n, layer_types=["dsa"] * n, mlp_layer_types=["moe"] * n,
        num_nextn_predict_layers=0,
        attention=AttentionConfig(num_attention_heads=4, head_dim=20, q_lora_rank=16, kv_lora_rank=24,
                                  qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10, o_groups=1, o_lora_rank=1,
                                  index_n_heads=8, index_head_dim=16, index_topk=topk),
        moe=MoEConfig(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, scoring_func="sigmoid",
                      swiglu_limit=None),
        hyper=HyperConfig(enabled=False, hc_mult=1))


def random_model(cfg: BackboneConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.3) if p.dim() >= 2 else p.uniform_(0.5, 1.5)
    return model


def context(model: Transformer, b: int, s: int):
    return model.make_context(b, s, torch.device("cpu"), None, None, None, None)


def as_mla(dsa: DSA, cfg: AttentionConfig) -> MLA:
    mla = MLA(32, cfg, 1e-6)
    mla.load_state_dict({k: v for k, v in dsa.state_dict().items() if not k.startswith("indexer.")})
    return mla.eval()


@pytest.mark.parametrize("mode", ["mha", "absorb"])
def test_dense_limit_equals_mla(mode):
    cfg = dsa_config(topk=12)
    model = random_model(cfg)
    dsa = model.layers[0].attn
    mla = as_mla(dsa, cfg.attention)
    dsa.mode = mla.mode = mode
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        a, b = dsa(x, context(model, 2, 12), None), mla(x, context(model, 2, 12), None)
    assert (a - b).abs().max() / b.abs().max() < 1e-5


def test_sparse_equals_dense_attention_with_minus_inf_outside_selection():
    """With top-k < length, DSA equals MLA fed the causal mask plus -inf at every unselected key."""
    cfg = dsa_config(topk=3)
    model = random_model(cfg, seed=1)
    dsa = model.layers[0].attn
    dsa.record = True
    x = torch.randn(2, 10, 32)
    ctx = context(model, 2, 10)
    with torch.no_grad():
        out = dsa(x, ctx, None)
        sel = dsa.last_selection                                                     # [B, S, L]
        causal = torch.ones(10, 10).tril().bool()
        bias = torch.zeros(2, 1, 10, 10).masked_fill(~(sel & causal).unsqueeze(1), float("-inf"))
        cos, sin = ctx.rope["main"]
        q, _ = dsa.query(x, cos, sin)
        c_kv, k_pe = dsa.latents(x, cos, sin)
        ref = dsa.wo(dsa.attend(q, c_kv, k_pe, bias, mode="mha").flatten(2))
    torch.testing.assert_close(out, ref)
    assert (sel & causal).sum(-1).max() == 3 and not torch.equal(sel & causal, causal.expand(2, -1, -1))


def test_selection_is_causal_and_fills_short_rows():
    scores = torch.randn(1, 6, 6).masked_fill(~torch.ones(6, 6).tril().bool(), float("-inf"))
    sel = topk_mask(scores, 4)
    visible = sel & torch.isfinite(scores)
    assert visible.sum(-1).tolist() == [[1, 2, 3, 4, 4, 4]]                         # t < k: every visible key
    assert not (visible & torch.ones(6, 6).triu(1).bool()).any()                     # nothing from the future
    with pytest.raises(ValueError, match="index_topk must be > 0, got 0"):
        topk_mask(scores, 0)


def test_topk_zero_in_config_is_rejected():
    with pytest.raises(ValueError, match="index_topk must be > 0, got 0"):
        AttentionConfig(index_topk=0)


def test_indexer_formula():
    """I[t, s] = sum_h w_h * H^-1/2 * relu(q_h . k_s) * d^-1/2 with w = weights_proj(x) (before H^-1/2)."""
    model = random_model(dsa_config(topk=4), seed=2)
    idx = model.layers[0].attn.indexer
    x, q_res = torch.randn(1, 5, 32), torch.randn(1, 5, 16)
    cos, sin = model.rotary["main"](torch.arange(5)[None])
    q, k, w = idx.project(x, q_res, cos, sin)
    scores = idx.scores(q, k, w)
    raw_w = idx.weights_proj(x)
    expected = torch.zeros(1, 5, 5)
    for t in range(5):
        for s in range(5):
            for h in range(8):
                expected[0, t, s] += raw_w[0, t, h] * 8 ** -0.5 * torch.relu(q[0, t, h] @ k[0, s]) * 16 ** -0.5
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def test_indexer_rope_is_half_split_and_mla_rope_interleaved():
    rot = RotaryEmbedding(8, 10000.0)
    cos, sin = rot(torch.tensor([[3]]))
    x = torch.arange(12, dtype=torch.float32).view(1, 1, 12)
    half = apply_rope_half(x, cos, sin)
    torch.testing.assert_close(half[..., 8:], x[..., 8:])                            # rope on the FIRST 8 dims
    a, b = x[..., :4], x[..., 4:8]
    torch.testing.assert_close(half[..., :8], torch.cat([a * cos - b * sin, b * cos + a * sin], -1))
    inter = apply_rope(x, cos, sin)
    torch.testing.assert_close(inter[..., :4], x[..., :4])                           # MLA: the LAST dims
    assert not torch.allclose(inter[..., 4:], half[..., :8])


def test_cached_decode_equals_full_forward_with_sparse_selection():
    model = random_model(dsa_config(topk=3), seed=3)
    ids = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        steps = [model(ids[:, :5], cache=cache).logits]
        steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(5, 11)]
    inc = torch.cat(steps, dim=1)
    assert (inc - full).abs().max() / full.abs().max() < 1e-5
    assert cache.layers[0].indexer.entries.shape == (2, 11, 16)                     # one indexer key per token
