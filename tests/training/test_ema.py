"""The EMA of the weights (`TrainConfig.ema_decay`): the update rule by hand, an exact swap in and out, exact resume,
and an export made of the averaged weights."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from multimodal.training.ema import EMA
from multimodal.training.trainer import EMA_PREFIX, Trainer


def test_update_rule_by_hand():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = EMA(model, decay=0.9)
    expected = torch.tensor([[1.0, 2.0]])
    for t, value in enumerate([3.0, -1.0, 5.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        d = min(0.9, (1 + t) / (10 + t))                  # 0.1, 2/11, 3/12: the warm-up of the decay
        expected = d * expected + (1 - d) * value
        ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], expected, rtol=0, atol=1e-6)
    assert ema.updates == 3 and ema.current_decay() == pytest.approx(4 / 13)


def test_applied_swaps_in_and_back_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    ema = EMA(model, decay=0.5)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied(model):
        for name, p in model.named_parameters():
            assert torch.equal(p, ema.shadow[name])
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)
    with pytest.raises(ValueError, match="missing"):
        ema.load_state_dict({})


def test_resume_and_export_use_the_average(tmp_path, tiny_config):
    cfg = tiny_config.replace(ema_decay=0.9, max_steps=4, save_every=2, keep_checkpoints=2)
    full = Trainer(cfg, tmp_path / "full", log=lambda s: None)
    full.train()
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000004")
    (tmp_path / "cut" / "checkpoints" / "latest").unlink()
    cut = Trainer(cfg, tmp_path / "cut", resume=True, log=lambda s: None)
    assert cut.step == 2 and cut.ema.updates == 2
    cut.train()
    assert cut.ema.updates == full.ema.updates == 4
    for name, value in full.ema.shadow.items():
        assert torch.equal(value, cut.ema.shadow[name]), name
    from multimodal.convert.checkpoint import load_pretrained
    exported = load_pretrained(tmp_path / "full" / "model").state_dict()
    live = full.model.state_dict()
    params = dict(full.model.named_parameters())
    for name in params:
        torch.testing.assert_close(exported[name], full.ema.shadow[name].to(exported[name].dtype), rtol=0, atol=0)
    assert any(not torch.equal(live[n], exported[n]) for n in params)        # the average, not the last iterate
    from multimodal.training.checkpoint import load_checkpoint
    tensors, _, _ = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_00000004")
    assert f"{EMA_PREFIX}__updates__" in tensors


def test_resuming_a_run_without_ema_is_refused(tmp_path, tiny_config):
    Trainer(tiny_config.replace(max_steps=2, save_every=2), tmp_path / "run", log=lambda s: None).train()
    with pytest.raises(ValueError, match="ema_decay"):
        Trainer(tiny_config.replace(max_steps=2, save_every=2, ema_decay=0.9), tmp_path / "run", resume=True,
                log=lambda s: None)
