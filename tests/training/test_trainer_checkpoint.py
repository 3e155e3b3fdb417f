"""Training-state checkpoints: exact round trip, atomic writes, a full disk leaves the previous checkpoint intact."""

from __future__ import annotations

import errno
import json
import random

import numpy as np
import pytest
import torch

from multimodal.training import checkpoint as ckpt
from multimodal.training.checkpoint import (CheckpointWriteError, latest_checkpoint, list_checkpoints,
                                            load_checkpoint, restore_rng, rng_of, save_checkpoint)
from multimodal.training.optimizer import build_optimizer


def _model_and_optimizer(name: str = "adamw"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    opt = build_optimizer(model, name, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(2):
        model(torch.arange(6)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_round_trip_is_exact(tmp_path, optimizer):
    model, opt = _model_and_optimizer(optimizer)
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    path = save_checkpoint(tmp_path, 3, model.state_dict(), opt.state_dict(), {"data": {"text": {"offset": 4}}})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    tensors, opt_state, state = load_checkpoint(path)
    assert state["step"] == 3 and state["data"] == {"text": {"offset": 4}}
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[k], v)
    model2, opt2 = _model_and_optimizer(optimizer)
    opt2.load_state_dict(opt_state)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for name, value in a["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][i][name])), (i, name)
    restore_rng(*rng_of(state, path))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert not list(path.glob("*.pt")) and not list(path.glob("*.pkl"))          # nothing pickled
    json.loads((path / "state.json").read_text())


def test_keep_latest_and_tied_weights(tmp_path):
    emb = torch.nn.Embedding(4, 3)
    head = torch.nn.Linear(3, 4, bias=False)
    head.weight = emb.weight                                                  # tied: two names, one storage
    tensors = {"embed.weight": emb.weight, "head.weight": head.weight}
    opt = torch.optim.AdamW(emb.parameters())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, tensors, opt.state_dict(), {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    loaded, _, _ = load_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(loaded["head.weight"], emb.weight.detach())


def test_full_disk_leaves_previous_checkpoint_intact(tmp_path):
    model, opt = _model_and_optimizer()
    first = save_checkpoint(tmp_path, 1, model.state_dict(), opt.state_dict(), {"mark": "one"})
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    calls = []

    def failing_writer(tensors, path):
        calls.append(path.name)
        if len(calls) == 2:                    # the model file is written, then the disk is full
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        ckpt.write_tensors(tensors, path)

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*earlier checkpoints are intact"):
        save_checkpoint(tmp_path, 2, model.state_dict(), opt.state_dict(), {"mark": "two"}, writer=failing_writer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]   # no temporary left
    assert latest_checkpoint(tmp_path) == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    _, _, state = load_checkpoint(first)
    assert state["mark"] == "one"


def test_killed_save_leftovers_are_ignored_and_cleaned(tmp_path):
    model, opt = _model_and_optimizer()
    save_checkpoint(tmp_path, 1, model.state_dict(), opt.state_dict(), {})
    stale = tmp_path / ".tmp-step_00000002-999"           # what a SIGKILL during a save leaves behind
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 10)
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    save_checkpoint(tmp_path, 2, model.state_dict(), opt.state_dict(), {})
    assert not stale.exists() and latest_checkpoint(tmp_path).name == "step_00000002"


def test_incomplete_checkpoint_is_reported(tmp_path):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path, 1, model.state_dict(), opt.state_dict(), {})
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="optimizer.safetensors is missing"):
        load_checkpoint(path)
