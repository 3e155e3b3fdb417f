"""`multimodal world`: a sample of the world on disk, readable like a user's own data."""

import json

import numpy as np

from multimodal.cli import main
from multimodal.data.files import read_image, read_jsonl, read_video
from multimodal.data.render import render_sample
from multimodal.data.world import sample_image, sample_video


def test_world_command_writes_pngs_mp4s_and_captions(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["world", str(out), "--split", "held-out", "--images", "6", "--videos", "2", "--start", "10"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 images and 2 videos" in printed
    rows = read_jsonl(out / "captions.jsonl")
    assert len(rows) == 8 and sum(r["file"].endswith(".png") for r in rows) == 6
    for row in rows:
        assert row["split"] == "held-out" and "held-out" in row["tags"]
        if row["file"].endswith(".png"):
            sample = sample_image(row["seed"])
            assert np.array_equal(read_image(out / row["file"]), render_sample(sample))  # PNG is lossless
        else:
            sample = sample_video(row["seed"])
            frames = read_video(out / row["file"])
            assert frames.shape == (17, 64, 64, 3)
            assert np.abs(frames.astype(int) - render_sample(sample)).mean() < 4
            assert len(row["positions"]) == 17
        assert row["caption"] == sample.caption and json.dumps(row)


def test_world_command_rejects_bad_arguments(tmp_path, capsys):
    assert main(["world", str(tmp_path / "w"), "--split", "dev"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'dev'" in err
    assert main(["world", str(tmp_path / "w"), "--images", "0", "--videos", "0"]) == 2
