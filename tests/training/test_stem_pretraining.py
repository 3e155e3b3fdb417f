"""Stem pretraining (`training/stem_pretraining.py`): per-cell targets from the world's metadata, a short run that
learns and writes a stem file the trainer reads, and refusals by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from multimodal.cli import main
from multimodal.data.world import WorldObject, sample_image, sample_video, split_seed
from multimodal.training.stem_pretraining import (COLOUR_CLASSES, IGNORE, SHAPE_CLASSES, SIZE_CLASSES, STEM_KEYS,
                                                  StemPretrainConfig, StemReader, cell_targets, frame_range,
                                                  load_stem_file, pretrain_stem)


def test_frame_range_follows_the_causal_autoencoder():
    assert list(frame_range(0, 4)) == [0]
    assert list(frame_range(1, 4)) == [1, 2, 3, 4]
    assert list(frame_range(4, 4)) == [13, 14, 15, 16]


def test_targets_of_an_image_mark_centres_and_empty_cells():
    for i in range(40):
        s = sample_image(split_seed("train", i))
        t = cell_targets(s, 1, (8, 8))                                                  # [1, 3, 8, 8]
        assert t.shape == (1, 3, 8, 8)
        centres = {(int(o.centre()[1] // 8), int(o.centre()[0] // 8)) for o in s.objects}
        for o in s.objects:
            r, c = int(o.centre()[1] // 8), int(o.centre()[0] // 8)
            if sum(1 for p in s.objects if (int(p.centre()[1] // 8), int(p.centre()[0] // 8)) == (r, c)) == 1:
                assert t[0, :, r, c].tolist() == [SHAPE_CLASSES.index(o.shape), COLOUR_CLASSES.index(o.colour),
                                                  SIZE_CLASSES.index(o.size)]
        for r in range(8):
            for c in range(8):
                if (r, c) in centres:
                    continue
                label = int(t[0, 0, r, c])
                assert label in (0, IGNORE)
                assert t[0, 1, r, c] == IGNORE and t[0, 2, r, c] == IGNORE
                touched = any(o.box()[0] < 8 * c + 8 and o.box()[2] > 8 * c and o.box()[1] < 8 * r + 8
                              and o.box()[3] > 8 * r for o in s.objects)
                assert (label == IGNORE) == touched, (i, r, c)


def test_targets_of_a_clip_follow_the_motion():
    """Latent frame k holds the object at its mean centre over the pixel frames 4k - 3 .. 4k."""
    o = WorldObject("red", "digit 3", "small", x=2, y=20, motion="moves right")       # 2 px per frame
    base = sample_video(split_seed("train", 0))
    s = type(base)(base.seed, base.split, "video", (o,), base.clauses, 17)
    t = cell_targets(s, 5, (8, 8))
    for k in range(5):
        frames = list(frame_range(k, 4))
        cx = sum(o.centre(f)[0] for f in frames) / len(frames)
        assert t[k, 0, 3, int(cx // 8)] == SHAPE_CLASSES.index("digit 3"), k
        assert (t[k, 0] > 0).sum() == 1


def test_the_reader_weighs_objects_against_empty_cells():
    torch.manual_seed(0)
    reader = StemReader(16, 8)
    z = torch.randn(4, 16, 8, 8)
    y = torch.full((4, 3, 8, 8), IGNORE)
    y[:, 0] = 0                                                                          # every cell empty
    y[:, :, 2, 2] = torch.tensor([5, 1, 0])                                              # one object per frame
    shape, colour, size = reader(z)
    expected = (torch.nn.functional.cross_entropy(shape[:, :, 2, 2], y[:, 0, 2, 2])
                + torch.nn.functional.cross_entropy(shape.permute(0, 2, 3, 1)[y[:, 0] == 0], y[:, 0][y[:, 0] == 0])
                + torch.nn.functional.cross_entropy(colour[:, :, 2, 2], y[:, 1, 2, 2])
                + torch.nn.functional.cross_entropy(size[:, :, 2, 2], y[:, 2, 2, 2]))
    torch.testing.assert_close(reader.loss(z, y), expected, rtol=1e-5, atol=1e-6)
    assert set(reader.stem_state()) == set(STEM_KEYS)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """60 updates on the latents of 64 training images and 4 clips from the shipped autoencoder (~5 s)."""
    root = tmp_path_factory.mktemp("stem")
    cfg = StemPretrainConfig(width=16, images=64, videos=4, validation_images=16, validation_videos=2, max_steps=60,
                             batch_size=32, eval_every=30)
    return root, pretrain_stem(cfg, root / "out", log=lambda s: None)


def test_a_short_run_learns_and_writes_a_stem(small_run):
    root, report = small_run
    curve = report["curve"]
    assert [r["step"] for r in curve] == [30, 60]
    assert report["training_frames"] == 64 + 4 * 5
    # measured: loss 8.3 -> 3.9, empty cells 96%, sizes 91% of the training frames' cells
    assert curve[-1]["loss"] < 0.7 * report["first_loss"]
    assert report["train_subset"]["none"] > 0.8 and report["train_subset"]["size"] > 0.7
    assert set(report["validation"]) == {"image", "video"}
    tensors, meta = load_stem_file(root / "out" / "visual_stem.safetensors")
    assert set(tensors) == set(STEM_KEYS) and tensors["conv1.weight"].shape == (16, 16, 3, 3)
    assert meta["width"] == "16" and meta["latent_channels"] == "16" and len(meta["autoencoder"]) == 64
    assert json.loads((root / "out" / "stem_report.json").read_text())["validation"] == report["validation"]
    assert (root / "out" / "latents" / "image.safetensors").is_file()       # the trainer's cache file names


def test_bad_stem_files_and_settings_are_refused_by_name(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="visual_stem_init .*nope.safetensors: no such file"):
        load_stem_file(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors: not a safetensors file"):
        load_stem_file(tmp_path / "junk.safetensors")
    save_file({"conv1.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors: not a pretrained stem"):
        load_stem_file(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="width must be an integer > 0"):
        StemPretrainConfig(width=0)
    with pytest.raises(ValueError, match="images \\+ videos must be > 0"):
        StemPretrainConfig(images=0, videos=0)
    (tmp_path / "cfg.json").write_text(json.dumps({"widht": 8}))
    assert main(["train", "stem", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown StemPretrainConfig keys: ['widht']" in capsys.readouterr().err
    assert main(["train", "stem", "--init-from", "shapes", "--out", str(tmp_path / "o")]) == 2
    assert "--init-from is not used by stem pretraining" in capsys.readouterr().err


def test_the_cli_runs_a_config_and_prints_the_validation_figures(tmp_path, capsys):
    (tmp_path / "stem.json").write_text(json.dumps({"width": 8, "images": 16, "videos": 0, "validation_images": 8,
                                                    "validation_videos": 0, "batch_size": 8, "eval_every": 5}))
    assert main(["train", "stem", "--config", str(tmp_path / "stem.json"), "--max-steps", "5", "--seed", "1",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "step 5: loss" in out and "validation: image: shape " in out
    report = json.loads((tmp_path / "out" / "stem_report.json").read_text())
    assert report["config"]["max_steps"] == 5 and report["config"]["seed"] == 1 and report["config"]["width"] == 8
