"""The Muon / AdamW / Engram-table optimiser split (multimodal/training/optim.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multimodal.backbone.transformer import Transformer
from multimodal.config import EngramConfig, preset
from multimodal.training.optim import build_optimizer, param_groups


def small_model() -> Transformer:
    torch.manual_seed(0)
    cfg = preset("debug").replace(engram=EngramConfig(layers=[1], table_size=101, n_heads=2, d_mem=16))
    return Transformer(cfg)


def test_every_parameter_in_exactly_one_group():
    model = small_model()
    groups = param_groups(model)
    names = [n for g in groups.values() for n, _ in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert all(p.dim() == 2 and n.startswith(("layers.", "mtp.")) for n, p in groups["muon"])
    assert all(".hc_" not in f".{n}" for n, _ in groups["muon"])
    assert {n for n, _ in groups["engram"]} == {"layers.1.engram.table.weight"}
    assert all(p.dim() == 1 for _, p in groups["no_decay"])
    assert "embed.weight" in dict(groups["adamw"]) and "layers.0.ffn.experts.w1" in dict(groups["adamw"])


def test_engram_tables_get_their_own_lr_and_no_decay():
    model = small_model()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, engram_lr_mult=5.0)
    by_name = {g.get("name"): g for g in opt.optimizers["adamw"].param_groups}
    assert by_name["engram"]["lr"] == pytest.approx(5e-3) and by_name["engram"]["weight_decay"] == 0.0
    assert by_name["adamw"]["weight_decay"] == 0.1 and by_name["no_decay"]["weight_decay"] == 0.0
    assert isinstance(opt.optimizers["muon"], torch.optim.Muon)


def test_muon_step_is_orthogonalised():
    """Muon's update of a matrix has (nearly) equal singular values even for a rank-skewed gradient."""
    w = torch.nn.Parameter(torch.zeros(16, 32))
    opt = torch.optim.Muon([w], lr=0.1, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    g = torch.randn(16, 1) @ torch.randn(1, 32) * 10 + torch.randn(16, 32) * 0.1      # condition number ~ 1e3
    w.grad = g
    opt.step()
    sv, gsv = torch.linalg.svdvals(w.detach()), torch.linalg.svdvals(g)
    assert gsv.max() / gsv.min() > 300 and sv.max() / sv.min() < 6                  # 5 Newton-Schulz steps


def test_training_steps_reduce_the_loss():
    model = small_model()
    opt = build_optimizer(model, lr=3e-3)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))

    def loss() -> torch.Tensor:
        logits = model(ids).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    first = loss().item()
    for _ in range(8):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < first - 0.5
    state = opt.state_dict()
    assert set(state) == {"muon", "adamw"}
    opt.load_state_dict(state)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="engram_lr_mult must be > 0, got 0"):
        build_optimizer(small_model(), engram_lr_mult=0)
