"""Native Sparse Attention (attention.md §3, tests §6.13): degenerate limits equal full causal attention, the
selection keeps the initial and local blocks and is shared by a GQA group, cached decoding equals a full forward,
gradients stay finite. fp32; tolerance 1e-5 relative."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone.nsa import NSA, masked_attention, select_blocks
from multimodal.backbone.transformer import Transformer
from multimodal.config import AttentionConfig, BackboneConfig, HyperConfig, MoEConfig, NSAConfig


def nsa_config(**nsa) -> BackboneConfig:
    kw = dict(num_key_value_heads=2, block_size=4, block_count=3, local_blocks=1, window_size=4)
    kw.update(nsa)
    return BackboneConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, layer_types=["nsa"] * 2, mlp_layer_types=["dense"] * 2,
        num_nextn_predict_layers=0,
        attention=AttentionConfig(num_attention_heads=4, head_dim=16, qk_rope_head_dim=8, o_groups=1, o_lora_rank=1),
        moe=MoEConfig(n_routed_experts=2, num_experts_per_tok=1, moe_intermediate_size=8, intermediate_size=32),
        nsa=NSAConfig(**kw), hyper=HyperConfig(enabled=False, hc_mult=1))


def random_model(cfg: BackboneConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3) if p.dim() >= 2 else p.uniform_(0.5, 1.5)
    return m


def only_gate(layer: NSA, branch: int) -> None:
    """Open one branch's gate (sigmoid(100) = 1 in fp32), close the others (sigmoid(-100) ~ 4e-44)."""
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.copy_(torch.tensor([-100.0, -100.0, -100.0]).repeat(layer.n_heads))
        layer.gate.bias[branch::3] = 100.0


def full_attention(layer: NSA, x: torch.Tensor, ctx) -> torch.Tensor:
    b, s, _ = x.shape
    cos, sin = ctx.rope["main"]
    from multimodal.backbone.rope import apply_rope
    q = apply_rope(layer.wq(x).view(b, s, 4, 16), cos, sin)
    k = apply_rope(layer.wk(x).view(b, s, 2, 16), cos, sin)
    v = layer.wv(x).view(b, s, 2, 16)
    causal = torch.zeros(s, s).masked_fill(~torch.ones(s, s).tril().bool(), float("-inf")).view(1, 1, s, s)
    out, _ = masked_attention(q, k, v, causal, 16 ** -0.5)
    return layer.wo(out.flatten(2))


@pytest.mark.parametrize("branch,nsa", [(1, dict(block_count=4)), (2, dict(window_size=16))])
def test_degenerate_limits_equal_full_causal_attention(branch, nsa):
    model = random_model(nsa_config(**nsa))
    layer = model.layers[0].attn
    only_gate(layer, branch)
    x = torch.randn(2, 15, 32)
    ctx = model.make_context(2, 15, torch.device("cpu"), None, None, None, None)
    with torch.no_grad():
        out, ref = layer(x, ctx, None), full_attention(layer, x, ctx)
    assert (out - ref).abs().max() / ref.abs().max() < 1e-5


def test_sparse_selection_differs_from_full_attention():
    model = random_model(nsa_config(block_count=2, local_blocks=1))
    layer = model.layers[0].attn
    only_gate(layer, 1)
    x = torch.randn(1, 16, 32)
    ctx = model.make_context(1, 16, torch.device("cpu"), None, None, None, None)
    with torch.no_grad():
        assert (layer(x, ctx, None) - full_attention(layer, x, ctx)).abs().max() > 1e-3


def test_selection_forces_initial_and_local_blocks_and_fills_by_importance():
    imp = torch.tensor([0.0, 0.1, 0.7, 0.2, 0.0]).view(1, 1, 1, 5)                 # 5 complete blocks
    chosen = select_blocks(imp, torch.tensor([6]), n_blocks=7, count=4, local=2)
    assert chosen[0, 0, 0].nonzero().flatten().tolist() == [0, 2, 5, 6]             # initial, best, two local
    early = select_blocks(imp[..., :1], torch.tensor([1]), n_blocks=2, count=4, local=2)
    assert early[0, 0, 0].tolist() == [True, True]                                  # never beyond its own block


def test_selection_is_shared_by_the_heads_of_a_group():
    """The per-group importance is the sum over the group's heads: a head with an extreme preference for one block
    drags its whole group there, and both heads of the group read the same blocks."""
    probs = torch.zeros(1, 4, 1, 4)                                                 # [B, H, S, nc]
    probs[0, 0, 0, 1] = 1.0                                                         # group 0: head 0 wants block 1
    probs[0, 1, 0, 2] = 0.4                                                         # head 1 mildly block 2
    probs[0, 2, 0, 3] = 1.0                                                         # group 1 wants block 3
    importance = probs.view(1, 2, 2, 1, 4).sum(2)
    chosen = select_blocks(importance, torch.tensor([5]), n_blocks=6, count=3, local=1)
    assert chosen[0, 0, 0].nonzero().flatten().tolist() == [0, 1, 5]
    assert chosen[0, 1, 0].nonzero().flatten().tolist() == [0, 3, 5]


def test_cached_decode_equals_full_forward():
    model = random_model(nsa_config(), seed=1)
    ids = torch.randint(0, 64, (2, 14))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        steps = [model(ids[:, :6], cache=cache).logits] + [model(ids[:, t:t + 1], cache=cache).logits
                                                           for t in range(6, 14)]
    assert (torch.cat(steps, 1) - full).abs().max() / full.abs().max() < 1e-5


def test_gradients_are_finite_with_empty_compressed_rows_and_padding():
    model = random_model(nsa_config(), seed=2).train()
    ids = torch.randint(0, 64, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0
    model(ids, attention_mask=mask).logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_nsa_configs_are_named():
    with pytest.raises(ValueError, match="nsa.block_size must be > 0, got 0"):
        NSAConfig(block_size=0)
    with pytest.raises(ValueError, match=r"divisible by nsa.num_key_value_heads \(3\)"):
        nsa_config(num_key_value_heads=3)


def test_checkpoint_round_trip(tmp_path):
    from multimodal.convert.checkpoint import load_pretrained, save_pretrained

    model = random_model(nsa_config().replace(mlp_layer_types=["moe", "moe"]), seed=3)
    save_pretrained(model, tmp_path)
    back = load_pretrained(tmp_path)
    assert back.config.nsa == model.config.nsa and back.config.layer_types == ["nsa", "nsa"]
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
