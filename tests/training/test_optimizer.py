"""The one optimizer module (multimodal/training/optimizer.py): its parameter groups for the Trainer's models and the
backbone experiments, the Engram tables' own group, Muon's orthogonalised step, learning and state round trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multimodal.backbone.transformer import Transformer
from multimodal.config import EngramConfig, preset
from multimodal.model import UnifiedModel, model_preset
from multimodal.training.optimizer import CombinedOptimizer, Muon, build_optimizer, param_groups
from multimodal.training.schedule import WarmupCosine


def small_model() -> Transformer:
    torch.manual_seed(0)
    cfg = preset("debug").replace(engram=EngramConfig(layers=[1], table_size=101, n_heads=2, d_mem=16))
    return Transformer(cfg)


def names(model, groups) -> dict[str, set[str]]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {by_id[id(p)] for p in g["params"]} for g in groups["adamw"] + groups["muon"]}


def test_every_parameter_in_exactly_one_group():
    model = small_model()
    got = names(model, param_groups(model, 0.1, muon=True))
    listed = [n for group in got.values() for n in group]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    params = dict(model.named_parameters())
    assert got["engram"] == {"layers.1.engram.table.weight"}
    assert {"embed.weight", "head.weight", "layers.1.engram.conv.weight"} <= got["decay"]    # [C, 1, k]: no matrix
    assert {"layers.0.ffn.experts.w1", "layers.0.hc_attn.fn", "layers.1.engram.w_k.weight"} <= got["muon"]
    assert "layers.1.engram.conv_norm" in got["no_decay"]                                    # norm gains as a matrix
    assert all(params[n].ndim >= 2 and min(params[n].shape[-2:]) > 1 for n in got["muon"])
    assert all(params[n].ndim == 1 for n in got["no_decay"] - {"layers.1.engram.conv_norm"})
    adamw_only = names(model, param_groups(model, 0.1, muon=False))
    assert set(adamw_only) == {"decay", "no_decay", "engram"} and adamw_only["decay"] == got["decay"] | got["muon"]


@pytest.mark.parametrize("kind, preset_name", [("unified", "debug"), ("unified", "tiny"), ("backbone", "debug"),
                                               ("backbone", "tiny")])
def test_the_trainers_groups_are_unchanged(kind, preset_name):
    """For the Trainer's models (no Engram) the groups are those the Trainer's optimizer.py formed before the two
    optimizer modules merged: Muon on every >= 2-D tensor but the embeddings and the LM head, AdamW with decay on
    those, without decay on vectors (the old rule, inlined)."""
    with torch.device("meta"):       # text-only runs train the backbone, media runs the unified model
        model = UnifiedModel(model_preset(preset_name)) if kind == "unified" else Transformer(preset(preset_name))

    def old_is_muon(name, p):
        return p.ndim >= 2 and not (name.endswith("embed.weight") or name == "head.weight"
                                    or name.endswith(".head.weight") or name.split(".")[-1] == "tid2eid")

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    old = {"muon": {n for n, p in trainable if old_is_muon(n, p)},
           "decay": {n for n, p in trainable if not old_is_muon(n, p) and p.ndim >= 2},
           "no_decay": {n for n, p in trainable if p.ndim < 2}}
    assert names(model, param_groups(model, 0.1, muon=True)) == old
    assert names(model, param_groups(model, 0.1, muon=False)) == {"decay": old["muon"] | old["decay"],
                                                                  "no_decay": old["no_decay"]}


def test_engram_tables_get_their_own_lr_and_no_decay_through_the_schedule():
    model = small_model()
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.1, engram_lr_mult=5.0)
    assert isinstance(opt, CombinedOptimizer) and isinstance(opt.children[0], Muon)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["engram"]["lr"] == pytest.approx(5e-3) and by_name["engram"]["weight_decay"] == 0.0
    assert by_name["decay"]["weight_decay"] == 0.1 and by_name["no_decay"]["weight_decay"] == 0.0
    WarmupCosine(peak_lr=2e-3, warmup_steps=0, total_steps=10).apply(opt)
    assert by_name["engram"]["lr"] == pytest.approx(1e-2) and by_name["muon"]["lr"] == pytest.approx(2e-3)


def test_lr_scales_give_named_parts_their_own_rate():
    """`lr_scales` (TrainConfig.lr_scale): the parameters under a prefix leave their usual group for AdamW groups of
    their own at `lr * scale` through the schedule, decay as before; every parameter is still in one group; a prefix
    naming no trainable parameter is refused by name."""
    model = small_model()
    groups = param_groups(model, 0.1, muon=True, lr_scales={"layers.0.attn": 10.0})
    got = names(model, groups)
    listed = [n for group in got.values() for n in group]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    scaled = got["layers.0.attn (decay)"] | got.get("layers.0.attn (no_decay)", set())
    assert scaled == {n for n, _ in model.named_parameters() if n.startswith("layers.0.attn.")}
    assert not any(n.startswith("layers.0.attn.") for n in got["muon"] | got["decay"] | got["no_decay"])
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.1, lr_scales={"layers.0.attn": 10.0})
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["layers.0.attn (decay)"]["lr"] == pytest.approx(1e-2)
    assert by_name["layers.0.attn (decay)"]["weight_decay"] == 0.1
    WarmupCosine(peak_lr=2e-3, warmup_steps=0, total_steps=10).apply(opt)
    assert by_name["layers.0.attn (decay)"]["lr"] == pytest.approx(2e-2) and by_name["muon"]["lr"] == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="lr_scale 'layers.0.atn': no trainable parameter of the model is named so"):
        param_groups(model, 0.1, muon=True, lr_scales={"layers.0.atn": 10.0})


def test_muon_step_is_orthogonalised():
    """Muon's update of a matrix (and of each matrix of a stack) has nearly equal singular values even for a
    rank-skewed gradient."""
    g = torch.randn(16, 1) @ torch.randn(1, 32) * 10 + torch.randn(16, 32) * 0.1      # condition number ~ 1e3
    for shape in ((16, 32), (3, 16, 32)):
        w = torch.nn.Parameter(torch.zeros(shape))
        w.grad = g.expand(shape).clone()
        Muon([w], lr=0.1, weight_decay=0.0).step()
        for m in w.detach().reshape(-1, 16, 32):
            sv = torch.linalg.svdvals(m)
            assert sv.max() / sv.min() < 6                                          # 5 Newton-Schulz steps
    gsv = torch.linalg.svdvals(g)
    assert gsv.max() / gsv.min() > 300


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_training_steps_reduce_the_loss_and_the_state_round_trips(name):
    model = small_model()
    opt = build_optimizer(model, name, lr=3e-3)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))

    def loss() -> torch.Tensor:
        logits = model(ids).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    first = loss().item()
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < first - 0.5
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert opt.state_dict()["param_groups"] == state["param_groups"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="engram_lr_mult must be > 0, got 0"):
        build_optimizer(small_model(), engram_lr_mult=0)
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'muon', got 'sgd'"):
        build_optimizer(small_model(), "sgd")
