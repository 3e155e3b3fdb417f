"""The autoencoder training loop and command: a few steps of a tiny model end in a loadable file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal.cli import main
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.data.render import render_sample
from multimodal.data.world import sample_image, sample_video, split_seed
from multimodal.tokenizers.training_frames import batch, render_clip, to_model_range, world_clip
from multimodal.training.autoencoder import AutoencoderTrainConfig, evaluate_psnr, psnr, train_autoencoder


def test_frames_follow_the_world_rules():
    clip = render_clip(11, 17, "test")
    assert clip.shape == (17, 64, 64, 3) and clip.dtype.name == "uint8"
    assert (clip[:, :2] == 0).all() and (clip[:, :, -2:] == 0).all()  # 2 px margin stays background
    assert (render_clip(11, 17, "test") == clip).all()  # a pure function of the seed
    assert not (render_clip(11, 17, "train") == clip).all()  # splits use disjoint seeds


def test_world_frames_are_the_worlds_samples():
    assert (world_clip(4, 1, "test") == render_sample(sample_image(split_seed("test", 4)))).all()
    video = render_sample(sample_video(split_seed("test", 4)))
    assert (world_clip(4, 17, "test") == video).all() and (world_clip(4, 9, "test") == video[:9]).all()
    train = render_sample(sample_video(split_seed("train", 4)))
    window = world_clip(4, 9, "train")                         # a seed-chosen window of the training clip
    assert any((window == train[s:s + 9]).all() for s in range(9))
    with pytest.raises(ValueError, match="num_frames"):
        world_clip(0, 21)


def test_batch_mixes_world_and_stand_in_frames_by_seed():
    seeds = range(40)
    mixed = batch(seeds, 1, "train", world_fraction=0.5)
    world = batch(seeds, 1, "train", world_fraction=1.0)
    stand_in = batch(seeds, 1, "train", world_fraction=0.0)
    from_world = [bool(torch.equal(mixed[i], world[i])) for i in range(40)]
    assert all(f or torch.equal(mixed[i], stand_in[i]) for i, f in enumerate(from_world))
    assert 10 <= sum(from_world) <= 30                        # about half, fixed by the seeds
    assert torch.equal(stand_in, to_model_range(np.stack([render_clip(s, 1) for s in seeds])))
    with pytest.raises(ValueError, match="world_fraction"):
        batch(seeds, 1, world_fraction=1.5)


def test_psnr_is_measured_on_the_worlds_test_split():
    untrained = CausalAutoencoder(AutoencoderConfig(channels=(8, 16, 16)))
    world = evaluate_psnr(untrained, num_images=2, num_videos=1, video_frames=5)
    stand_in = evaluate_psnr(untrained, num_images=2, num_videos=1, video_frames=5, source="stand-in")
    assert world["image_count"] == 2 and world["video_count"] == 1
    assert world["image_psnr"] != stand_in["image_psnr"]
    with pytest.raises(ValueError, match="source"):
        evaluate_psnr(untrained, num_images=1, num_videos=0, source="mine")


def test_psnr_of_known_error():
    x = torch.full((1, 3, 1, 8, 8), -1.0)
    y = x.clone()
    y[..., 0, 0] += 10 / 127.5  # one pixel per channel off by 10 levels: MSE = 100 / 64
    assert psnr(x, y).item() == pytest.approx(10 * torch.log10(torch.tensor(255.0**2 * 64 / 100)).item(), abs=1e-3)


def test_training_loop_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "ae.safetensors"
    cfg = AutoencoderTrainConfig(out=str(out), minutes=0, max_steps=3, video_batch=1, video_frames=5, image_batch=2,
                                 warmup_steps=1, stats_clips=2, eval_images=2, eval_videos=1, log_every=1)
    logs = []
    model, summary = train_autoencoder(cfg, AutoencoderConfig(channels=(8, 16, 16)), log=logs.append)
    assert summary["steps"] == 3 and len([l for l in logs if l.startswith("step")]) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ae.safetensors"]
    loaded = CausalAutoencoder.from_pretrained(out)
    assert float(loaded.metadata["steps"]) == 3
    assert not torch.equal(loaded.latent_std, torch.ones(16))  # statistics were measured
    with pytest.raises(ValueError, match="video_frames"):
        AutoencoderTrainConfig(video_frames=8)


def test_cli_reports_bad_options_in_one_line(capsys):
    assert main(["train-autoencoder", "--video-frames", "6", "--out", "/nonexistent/x.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "video_frames must be 1 + 4k" in err
