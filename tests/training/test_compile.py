"""`TrainConfig.compile`: the named parts of the model run under `torch.compile` in the training step and train
what eager trains; a compile failure falls back to eager with one warning, never a crash; bad part names are
rejected by name."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from multimodal.training import compile as compile_mod
from multimodal.training.config import TrainConfig
from multimodal.training.media_tasks import MEDIA_TASKS
from multimodal.training.trainer import Trainer


def _media(tiny_config, autoencoder_file, **changes):
    changes = {"tasks": {"text": 1.0, **{name: 1.0 for name in MEDIA_TASKS}}, **changes}
    return tiny_config.replace(autoencoder=str(autoencoder_file), micro_batch_size=2, grad_accum=5, max_steps=2,
                               **changes)


def _trained(cfg, path):
    trainer = Trainer(cfg, path, log=lambda s: None)
    records = [trainer.train_step() for _ in range(cfg.max_steps)]
    return trainer, records


def _assert_same_training(a, b, rtol, atol):
    (ta, ra), (tb, rb) = a, b
    assert [r["loss"] for r in ra] == pytest.approx([r["loss"] for r in rb], rel=rtol, abs=atol)
    sa, sb = ta.model.state_dict(), tb.model.state_dict()
    assert sa.keys() == sb.keys()                                     # the guard leaves parameter names alone
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=rtol, atol=atol, msg=key)


def test_bad_part_names_are_rejected_by_name(tiny_config, tmp_path):
    with pytest.raises(ValueError, match=r"compile: unknown part\(s\) \['everything'\]; choose from \['heads', "
                                         r"'backbone'\]"):
        TrainConfig(compile=["heads", "everything"])
    with pytest.raises(ValueError, match="compile must be a list of part names"):
        TrainConfig(compile="heads")
    with pytest.raises(ValueError, match="compile target 'heads' needs a model with flow heads"):
        Trainer(tiny_config.replace(compile=["heads"]), tmp_path / "text", log=lambda s: None)


def test_compiled_parts_train_what_eager_trains(tiny_config, autoencoder_file, tmp_path, monkeypatch):
    """Dynamo traces the heads and every backbone block (backend "eager": the traced graphs run as PyTorch ops, so
    the update is the same to float rounding) over every task; sampling and evaluation stay eager."""
    plain = _trained(_media(tiny_config, autoencoder_file), tmp_path / "plain")
    monkeypatch.setattr(compile_mod, "BACKEND", "eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)               # no fallback happened
        compiled = _trained(_media(tiny_config, autoencoder_file, compile=["heads", "backbone"]), tmp_path / "c")
    state = compiled[0].compiled
    assert not state.failed
    assert {g.name for g in state.guards} == {"image_head", "video_head"} | {
        f"backbone.layers.{i}" for i in range(len(compiled[0].model.backbone.layers))}
    assert all(g.calls > 0 for g in state.guards if g.name.startswith("backbone") or g.name == "image_head")
    _assert_same_training(compiled, plain, rtol=1e-5, atol=1e-6)
    with torch.no_grad():                                             # gradients off: the original forward
        calls = [g.calls for g in state.guards]
        compiled[0].evaluate()
        assert [g.calls for g in state.guards] == calls


def test_a_compile_failure_falls_back_to_eager_with_one_warning(tiny_config, autoencoder_file, tmp_path,
                                                               monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    plain = _trained(_media(tiny_config, autoencoder_file), tmp_path / "plain")
    monkeypatch.setattr(compile_mod, "BACKEND", broken)
    with pytest.warns(RuntimeWarning) as caught:
        compiled = _trained(_media(tiny_config, autoencoder_file, compile=["heads", "backbone"]), tmp_path / "c")
    ours = [w for w in caught if "torch.compile failed" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "no C++ compiler on this machine" in str(ours[0].message)
    assert compiled[0].compiled.failed
    _assert_same_training(compiled, plain, rtol=0, atol=0)           # eager from the failed call on: identical


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="Inductor needs a C++ compiler")
def test_inductor_compiles_the_heads(tiny_config, autoencoder_file, tmp_path):
    """The real backend (C++ code on a CPU): the flow heads train as eager does, to fp32 rounding."""
    plain = _trained(_media(tiny_config, autoencoder_file, tasks={"text_to_image": 1.0}), tmp_path / "plain")
    compiled = _trained(_media(tiny_config, autoencoder_file, tasks={"text_to_image": 1.0}, compile=["heads"]),
                        tmp_path / "c")
    assert not compiled[0].compiled.failed, compiled[0].compiled.failed
    assert compiled[0].compiled.guards[0].calls > 0
    _assert_same_training(compiled, plain, rtol=1e-4, atol=1e-5)


def test_graph_breaks_counts_and_locates_them():
    def branchy(x):
        y = x * 2
        if y.sum() > 0:                          # data-dependent control flow: Dynamo breaks the graph here
            return y + 1
        return y - 1

    found = compile_mod.graph_breaks(branchy, torch.ones(3))
    assert (found["graphs"], found["graph_breaks"]) == (2, 1)
    assert len(found["reasons"]) == 1 and "test_compile.py" in found["reasons"][0], found
    straight = compile_mod.graph_breaks(lambda x: (x * 2).sin(), torch.ones(3))
    assert (straight["graphs"], straight["graph_breaks"], straight["reasons"]) == (1, 0, [])
