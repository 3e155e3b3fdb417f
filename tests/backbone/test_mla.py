"""MLA (attention.md §1, tests §6.1-7, §6.17): absorbed ("MQA") mode equals expanded ("MHA") mode, the cache holds
only the normed latent and the post-RoPE key, incremental decoding equals a full forward, RoPE / YaRN numbers,
and the V2 / V3 gates. Tolerances: fp32, max abs error <= 1e-5 relative to the output scale unless stated.
"""

from __future__ import annotations

import math

import pytest
import torch

from multimodal.backbone.mla import MLA
from multimodal.backbone.moe import Router
from multimodal.backbone.rope import RotaryEmbedding, apply_rope, rope_inv_freq, yarn_correction_range, yarn_mscale
from multimodal.backbone.transformer import Transformer
from multimodal.config import AttentionConfig, BackboneConfig, HyperConfig, MoEConfig, RopeScaling


def mla_config(yarn: bool, q_lora: int = 16) -> BackboneConfig:
    scaling = RopeScaling(factor=40.0, original_max_position_embeddings=64, mscale=1.0, mscale_all_dim=1.0) if yarn else None
    return BackboneConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, layer_types=["mla"] * 2, mlp_layer_types=["dense", "moe"],
        num_nextn_predict_layers=0,
        attention=AttentionConfig(num_attention_heads=4, head_dim=20, q_lora_rank=q_lora, kv_lora_rank=24,
                                  qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10, o_groups=1, o_lora_rank=1,
                                  rope_scaling=scaling),
        moe=MoEConfig(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, intermediate_size=24,
                      scoring_func="sigmoid", routed_scaling_factor=2.5, n_group=2, topk_group=1, swiglu_limit=None),
        hyper=HyperConfig(enabled=False, hc_mult=1))


def random_model(cfg: BackboneConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() >= 2 else p.uniform_(0.5, 1.5)
    return model


def run_layer(model: Transformer, x: torch.Tensor, mode: str) -> torch.Tensor:
    attn = model.layers[0].attn
    attn.mode = mode
    ctx = model.make_context(x.shape[0], x.shape[1], x.device, None, None, None, None)
    return attn(x, ctx, None)


@pytest.mark.parametrize("yarn", [False, True])
def test_absorbed_equals_expanded_prefill(yarn):
    model = random_model(mla_config(yarn))
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        mha, mqa = run_layer(model, x, "mha"), run_layer(model, x, "absorb")
    assert (mha - mqa).abs().max() / mha.abs().max() < 1e-5


@pytest.mark.parametrize("yarn", [False, True])
def test_absorbed_decode_equals_full_forward(yarn):
    """Prefill 6 tokens (MHA mode), then decode 4 one at a time (absorbed mode): logits equal a full forward."""
    model = random_model(mla_config(yarn), seed=1)
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        steps = [model(ids[:, :6], cache=cache).logits]
        for t in range(6, 10):
            steps.append(model(ids[:, t:t + 1], cache=cache).logits)
    inc = torch.cat(steps, dim=1)
    assert (inc - full).abs().max() / full.abs().max() < 1e-5


def test_default_scale_on_576_dims_fails():
    """Guard against the classic bug (§6.6): absorbed attention with the default (kv_lora + rope)^-1/2 scale."""
    model = random_model(mla_config(yarn=True), seed=2)
    attn = model.layers[0].attn
    x = torch.randn(1, 8, 32)
    with torch.no_grad():
        ref = run_layer(model, x, "mha")
        right = attn.scale
        attn.scale = (attn.kv_lora_rank + attn.rope) ** -0.5
        wrong = run_layer(model, x, "absorb")
        attn.scale = right
    assert (wrong - ref).abs().max() / ref.abs().max() > 1e-2


def test_cache_holds_normed_latent_and_post_rope_key():
    model = random_model(mla_config(yarn=True), seed=3)
    ids = torch.randint(0, 64, (2, 7))
    cache = model.new_cache()
    with torch.no_grad():
        model(ids, cache=cache)
    attn, state = model.layers[0].attn, cache.layers[0].window
    x = model.layers[0].attn_norm(model.embed(ids))
    c_kv, k_pe = attn.wkv_a(x).split([24, 8], dim=-1)
    cos, sin = model.rotary["main"](torch.arange(7).expand(2, -1))
    torch.testing.assert_close(state.keys, attn.kv_norm(c_kv))
    torch.testing.assert_close(state.extra, apply_rope(k_pe, cos, sin))
    per_token = sum(s.window.keys.shape[-1] + s.window.extra.shape[-1] for s in cache.layers)
    assert per_token == (24 + 8) * 2                                  # (kv_lora + rope) * layers, nothing else


def test_weight_layout_uk_uv():
    """wkv_b rows are grouped per head as [k_nope | v]: view(H, nope + v, r)[:, :nope] = W_UK, [:, nope:] = W_UV."""
    attn = MLA(32, mla_config(False).attention, 1e-6)
    w_uk, w_uv = attn.absorbed_weights()
    c = torch.randn(3, 24)
    kv = attn.wkv_b(c).view(3, 4, 22)
    torch.testing.assert_close(kv[..., :12], torch.einsum("tc,hdc->thd", c, w_uk))
    torch.testing.assert_close(kv[..., 12:], torch.einsum("tc,hdc->thd", c, w_uv))


def test_interleaved_rope_equals_deinterleave_rotate_half():
    cos, sin = RotaryEmbedding(8, 10000.0)(torch.arange(5)[None])
    q, k = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    ours = (apply_rope(q, cos, sin) * apply_rope(k, cos, sin)).sum(-1)
    perm = torch.cat([torch.arange(0, 8, 2), torch.arange(1, 8, 2)])     # [x0, x2, .., x1, x3, ..]
    c2, s2 = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)

    def rotate_half(x):
        return torch.cat([-x[..., 4:], x[..., :4]], dim=-1)

    qh, kh = q[..., perm], k[..., perm]
    hf = ((qh * c2 + rotate_half(qh) * s2) * (kh * c2 + rotate_half(kh) * s2)).sum(-1)
    torch.testing.assert_close(ours, hf)


def test_rope_dot_product_depends_only_on_offset():
    rot = RotaryEmbedding(8, 10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def dot(m: int, n: int) -> torch.Tensor:
        cm, sm = rot(torch.tensor([[m]]))
        cn, sn = rot(torch.tensor([[n]]))
        return (apply_rope(q.view(1, 1, 8), cm, sm) * apply_rope(k.view(1, 1, 8), cn, sn)).sum()

    torch.testing.assert_close(dot(7, 3), dot(104, 100), atol=1e-4, rtol=1e-4)


def test_yarn_numbers_of_v3():
    """attention.md §1.4 / §6.5: dim 64, s = 40, L0 = 4096, beta 32 / 1."""
    assert yarn_correction_range(32, 1, 64, 10000.0, 4096) == (10, 23)
    m = yarn_mscale(40.0, 1.0)
    assert m ** 2 == pytest.approx(1.873854, abs=1e-6)
    assert yarn_mscale(40.0, 0.707) ** 2 == pytest.approx(1.589626, abs=1e-6)
    assert 192 ** -0.5 * m ** 2 == pytest.approx(0.135234, abs=1e-6)
    scaling = RopeScaling(factor=40.0, original_max_position_embeddings=4096)
    f = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    ramp = ((torch.arange(32, dtype=torch.float64) - 10) / 13).clamp(0, 1)
    torch.testing.assert_close(rope_inv_freq(64, 10000.0, scaling).double(), f * (1 - ramp) + f / 40 * ramp,
                               rtol=1e-6, atol=0)
    cfg = mla_config(yarn=True)
    attn = MLA(32, cfg.attention, 1e-6)
    assert attn.scale == pytest.approx(20 ** -0.5 * (0.1 * math.log(40) + 1) ** 2)


def brute_force_route(scores, bias, n_group, topk_group, k, group_by_max):
    """Reference routing by enumeration: best groups by (max | top-2 sum) of biased scores, then top-k inside."""
    out = []
    for s, sb in zip(scores, scores + bias):
        groups = sb.view(n_group, -1)
        gs = groups.max(-1).values if group_by_max else groups.topk(2, -1).values.sum(-1)
        keep = set(gs.argsort(descending=True)[:topk_group].tolist())
        size = groups.shape[1]
        cand = [e for e in range(len(s)) if e // size in keep]
        out.append(sorted(sorted(cand, key=lambda e: -sb[e].item())[:k]))
    return out


@pytest.mark.parametrize("func,n_group,topk_group", [("sigmoid", 4, 2), ("softmax", 4, 2), ("softmax", 1, 1)])
def test_gate_routing(func, n_group, topk_group):
    """V3 gate (sigmoid + correction bias, group top-2 sum) and V2 gates (softmax; group-limited by the group max,
    or greedy with one group): choice by biased scores within the kept groups, weights from the unbiased ones."""
    cfg = MoEConfig(n_routed_experts=16, num_experts_per_tok=3, moe_intermediate_size=8, scoring_func=func,
                    n_group=n_group, topk_group=topk_group, routed_scaling_factor=2.5, norm_topk_prob=func == "sigmoid")
    router = Router(12, cfg)
    with torch.no_grad():
        router.weight.normal_()
        if func == "sigmoid":
            router.bias.normal_(0, 0.5)
    x = torch.randn(20, 12)
    weights, idx, scores = router(x)
    expected = brute_force_route(scores, router.bias, n_group, topk_group, 3, func == "softmax")
    assert [sorted(r) for r in idx.tolist()] == expected
    ws = scores.gather(1, idx)
    if func == "sigmoid":
        torch.testing.assert_close(weights.sum(-1), torch.full((20,), 2.5))          # weights sum to route scale
        torch.testing.assert_close(weights, ws / ws.sum(-1, keepdim=True) * 2.5)
    else:
        torch.testing.assert_close(weights, ws * 2.5)                                # V2: no renormalisation


def test_bias_changes_choice_not_weights():
    cfg = MoEConfig(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, scoring_func="sigmoid",
                    n_group=1, topk_group=1, routed_scaling_factor=1.0)
    router = Router(6, cfg)
    x = torch.randn(30, 6)
    _, idx0, scores = router(x)
    with torch.no_grad():
        router.bias[3] = 10.0                                                        # force expert 3
    w1, idx1, _ = router(x)
    assert (idx1 == 3).any(-1).all() and not torch.equal(idx0, idx1)
    ws = scores.gather(1, idx1)
    torch.testing.assert_close(w1, ws / ws.sum(-1, keepdim=True))
