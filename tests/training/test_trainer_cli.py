"""`multimodal train`: presets, config files, flag overrides, --resume, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from multimodal.cli import main
from multimodal.training.metrics import read_metrics

from .conftest import TINY


def _config(tmp_path, **changes):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({**TINY, **changes}))
    return path


def test_config_file_flags_and_resume(tmp_path, capsys):
    cfg, out = _config(tmp_path, max_steps=2), tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    assert "stopped at step 2 (max_steps)" in capsys.readouterr().out
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["max_steps"] == 2 and saved["progress"] is False
    # continue the same run for longer: its own saved config, a longer schedule given by flag is a recipe change
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "3", "--no-progress"]) == 2
    assert "the recipe changed (max_steps: 2 -> 3)" in capsys.readouterr().err
    # resuming a finished run is a no-op that reports where it stands
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"] == [1, 2]


def test_max_time_stops_cleanly_with_a_checkpoint(tmp_path, capsys):
    cfg, out = _config(tmp_path, max_steps=1000, warmup_steps=1), tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--max-time", "0.5", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "(max_time)" in text
    assert (out / "checkpoints" / "latest").is_file() and not (out / "model").exists()


@pytest.mark.parametrize("args,message", [
    (["--config", "{cfg_bad}"], "unknown TrainConfig keys: ['batch', 'learning_rate']"),
    (["--config", "{cfg_mix}"], "unknown tasks ['image_to_speech']"),
    (["--config", "{cfg_ok}", "--preset", "debug"], "pass either --config or --preset"),
    (["--preset", "enormous"], "unknown training preset 'enormous'"),
    (["--config", "{missing}"], "training config not found"),
    (["--config", "{cfg_ok}", "--data", "{missing}"], "user data not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1.0, "batch": 3}))
    ok = _config(tmp_path)
    mix = tmp_path / "mix.json"                           # a mix naming a task the trainer does not have
    mix.write_text(json.dumps({**json.loads(ok.read_text()), "tasks": {"text": 1.0, "image_to_speech": 0.5}}))
    names = {"cfg_bad": bad, "cfg_ok": ok, "cfg_mix": mix, "missing": tmp_path / "nope.json"}
    args = [a.format(**names) for a in args]
    assert main(["train", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("multimodal train: error:") and "\n" not in err


def test_python_m_multimodal_entry_point():
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["multimodal", "train", "--help"]
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_module("multimodal", run_name="__main__")
    finally:
        sys.argv = argv
    assert exc.value.code == 0
