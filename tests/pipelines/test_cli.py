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


def test_default_candidates(pipe, saved, tmp_path):
    """Without --candidates, images are the best of 4 drafts (DEFAULT_CANDIDATES["image"]), videos one draw."""
    import torch

    from multimodal.cli import build_parser
    from multimodal.commands.generate import _check
    from multimodal.pipelines.rerank import DEFAULT_CANDIDATES

    assert DEFAULT_CANDIDATES == {"image": 4, "video": 1}
    assert main(["generate-image", "a red circle", "-o", str(tmp_path / "default.png"), "--model", saved,
                 "--steps", "2", "--seed", "5", "--no-progress"]) == 0
    best = pipe("a red circle", num_inference_steps=2, generator=[torch.Generator().manual_seed(5)],
                num_candidates=4).images[0]
    np.testing.assert_array_equal(read_image(tmp_path / "default.png"), np.asarray(best))
    for command, k in (("generate-image", 4), ("generate-video", 1)):
        args = build_parser().parse_args([command, "x", "-o", "out"])
        _check(args)
        assert args.candidates == k


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


def test_several_prompts_write_one_file_each_as_the_pipeline_draws_them(pipe, saved, tmp_path):
    """Positional prompts, then --prompts lines; output i = prompt i // num with seed + i, whatever the batch size."""
    import torch

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["generate-image", "a green triangle", "--prompts", str(prompts), "-o", f"{out}/", "--model", saved,
                 "--steps", "2", "--num", "2", "--batch-size", "2", "--candidates", "1", "--seed", "4",
                 "--no-progress"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0-a-green-triangle.png", "1-a-green-triangle.png", "2-a-red-circle.png", "3-a-red-circle.png",
                     "4-two-blue-squares.png", "5-two-blue-squares.png"]
    for i, name in enumerate(names):
        prompt = ["a green triangle", "a red circle", "two blue squares"][i // 2]
        alone = pipe(prompt, num_inference_steps=2, generator=[torch.Generator().manual_seed(4 + i)]).images[0]
        got = read_image(out / name).astype(int)
        assert np.abs(got - np.asarray(alone).astype(int)).max() <= 1, name     # batched forwards round alike
    assert main(["generate-video", "a red circle", "two blue squares", "-o", str(tmp_path / "v" / "{slug}-{i}.mp4"),
                 "--model", saved, "--steps", "1", "--frames", "5", "--candidates", "1", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["a-red-circle-0.mp4", "two-blue-squares-1.mp4"]


@pytest.mark.parametrize("lines, message", [
    ("a red circle\n\ntwo squares\n", "prompts.txt, line 2: empty line"),
    ("a red circle\n   \n", "prompts.txt, line 2: empty line"),
    ("", "prompts.txt: no prompts"),
    (b"\xff\xfe bad bytes", "cannot read --prompts"),
    (None, "cannot read --prompts"),                                       # no such file
])
def test_a_bad_prompts_file_is_one_line_naming_file_and_line(lines, message, tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    elif lines is not None:
        path.write_text(lines, encoding="utf-8")
    # --model nope: the check comes before any model would load
    assert main(["generate-image", "--prompts", str(path), "-o", str(tmp_path / "a.png"), "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(path) in err and "\n" not in err


@pytest.mark.parametrize("argv, message", [
    (["generate-image", "a red circle", "a red circle!", "-o", "{slug}.png"], "to one file, a-red-circle.png"),
    (["generate-image", "a", "b", "-o", "same.png", "--num", "1", "-o", "{x}.png"], "unknown field(s) {x}"),
    (["generate-video", "a", "-o", "a.png"], "unknown extension '.png'"),
    (["generate-image", "-o", "a.png"], "give a prompt"),
    (["generate-image", "", "-o", "a.png"], "prompt 1 is empty"),
    (["generate-image", "a", "-o", "a.png", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_output_and_prompt_errors_come_before_any_work(argv, message, capsys):
    assert main(argv + ["--model", "nope"]) == 2                            # never reaches the model
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_quiet_by_default_and_verbose_shows_kernel_choices(saved, tmp_path, capsys, monkeypatch):
    from multimodal.kernels import dispatch

    argv = ["generate-image", "a red circle", "-o", str(tmp_path / "a.png"), "--model", saved, "--steps", "1",
            "--candidates", "1", "--no-progress"]
    monkeypatch.setattr(dispatch, "_logged", set())
    monkeypatch.delenv("MULTIMODAL_LOG_LEVEL", raising=False)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.strip() == str(tmp_path / "a.png")
    for extra, env in ((["-v"], None), ([], "debug")):
        monkeypatch.setattr(dispatch, "_logged", set())
        if env:
            monkeypatch.setenv("MULTIMODAL_LOG_LEVEL", env)
        assert main(argv + extra) == 0
        err = capsys.readouterr().err
        assert "DEBUG: multimodal.kernels.moe_ffn: using the PyTorch reference (CPU tensors" in err
    monkeypatch.setenv("MULTIMODAL_LOG_LEVEL", "WARNING")
    monkeypatch.setattr(dispatch, "_logged", set())
    assert main(["-v"] + argv) == 0 and "DEBUG:" in capsys.readouterr().err         # -v before the command
    monkeypatch.setenv("MULTIMODAL_LOG_LEVEL", "loud")
    assert main(argv) == 2 and "MULTIMODAL_LOG_LEVEL='loud' is not a log level" in capsys.readouterr().err
    monkeypatch.delenv("MULTIMODAL_LOG_LEVEL")
    assert main(argv) == 0 and capsys.readouterr().err == ""                 # back to quiet
