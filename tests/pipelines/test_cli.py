"""The generate-* and caption-* commands, run in-process through `multimodal.cli.main`."""

from __future__ import annotations

import numpy as np
import pytest

from multimodal.cli import main
from multimodal.io import probe_video, read_image
from multimodal.pipelines import BUILTIN_MODELS


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    return str(pipe.save_pretrained(tmp_path_factory.mktemp("cli") / "pipe"))


def test_generate_image_video_text_and_caption(saved, tmp_path, capsys):
    assert main(["generate-image", "a red circle above a blue square", "-o", str(tmp_path / "out.png"),
                 "--model", saved, "--steps", "2", "--num", "2", "--seed", "3", "--no-progress"]) == 0
    a, b = read_image(tmp_path / "out-0.png"), read_image(tmp_path / "out-1.png")
    assert a.shape == (64, 64, 3) and np.abs(a.astype(int) - b.astype(int)).mean() > 1
    assert main(["generate-image", "a red circle above a blue square", "-o", str(tmp_path / "again.png"),
                 "--model", saved, "--steps", "2", "--seed", "3", "--no-progress"]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "again.png"), a)          # seed 3 -> the first of --num 2
    assert main(["generate-video", "a small blue square moves left", "-o", str(tmp_path / "clip.mp4"),
                 "--model", saved, "--steps", "2", "--frames", "9", "--no-progress"]) == 0
    info = probe_video(tmp_path / "clip.mp4")
    assert (info.width, info.height) == (64, 64)
    capsys.readouterr()
    assert main(["caption-video", str(tmp_path / "clip.mp4"), "--model", saved, "--max-new-tokens", "4"]) == 0
    assert main(["caption-image", str(tmp_path / "out-0.png"), str(tmp_path / "out-1.png"), "--model", saved,
                 "--max-new-tokens", "4"]) == 0
    assert main(["generate-text", "a red", "--model", saved, "--max-new-tokens", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[1].startswith(str(tmp_path / "out-0.png") + "\t")


def test_candidates(pipe, saved, tmp_path):
    """--candidates 1 is the plain pipeline; K > 1 writes the draft `num_candidates=K` returns."""
    import torch

    assert main(["generate-image", "a red circle", "-o", str(tmp_path / "one.png"), "--model", saved, "--steps", "2",
                 "--seed", "5", "--candidates", "1", "--no-progress"]) == 0
    plain = pipe("a red circle", num_inference_steps=2, generator=[torch.Generator().manual_seed(5)]).images[0]
    np.testing.assert_array_equal(read_image(tmp_path / "one.png"), np.asarray(plain))
    assert main(["generate-image", "a red circle", "-o", str(tmp_path / "best.png"), "--model", saved, "--steps", "2",
                 "--seed", "5", "--candidates", "3", "--no-progress"]) == 0
    best = pipe("a red circle", num_inference_steps=2, generator=[torch.Generator().manual_seed(5)],
                num_candidates=3).images[0]
    np.testing.assert_array_equal(read_image(tmp_path / "best.png"), np.asarray(best))


@pytest.mark.parametrize("argv, message", [
    (["generate-image", "x", "-o", "a.png", "--model", "unshipped"], "built-in model 'unshipped' is not available"),
    (["generate-image", "x", "-o", "a.png", "--model", "nope"], "unknown model 'nope'"),
    (["caption-video", "/no/such/clip.mp4", "--model", "nope"], "no such file"),
    (["generate-video", "x", "-o", "a.mp4", "--model", "{saved}", "--frames", "8"], "1 + 4k"),
    (["generate-image", "x", "-o", "a.png", "--model", "{saved}", "--num", "0"], "--num must be >= 1"),
    (["generate-image", "x", "-o", "a.png", "--model", "{saved}", "--candidates", "0"], "--candidates must be in [1, 32]"),
    (["generate-video", "x", "-o", "a.mp4", "--model", "{saved}", "--candidates", "33"], "got 33"),
])
def test_errors_are_one_line_and_non_zero(argv, message, saved, capsys, monkeypatch):
    monkeypatch.setitem(BUILTIN_MODELS, "unshipped", "no-such-folder")     # a built-in name whose weights are absent
    assert main([a.format(saved=saved) for a in argv]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_unreadable_media_is_one_line(saved, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 20)
    assert main(["caption-video", str(bad), "--model", saved]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.mp4" in err and "\n" not in err
