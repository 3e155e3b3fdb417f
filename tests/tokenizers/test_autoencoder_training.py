"""The autoencoder training loop and command: a few steps of a tiny model end in a loadable file."""

from __future__ import annotations

import pytest
import torch

from multimodal.cli import main
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.tokenizers.training_frames import render_clip
from multimodal.training.autoencoder import AutoencoderTrainConfig, psnr, train_autoencoder


def test_frames_follow_the_world_rules():
    clip = render_clip(11, 17, "test")
    assert clip.shape == (17, 64, 64, 3) and clip.dtype.name == "uint8"
    assert (clip[:, :2] == 0).all() and (clip[:, :, -2:] == 0).all()  # 2 px margin stays background
    assert (render_clip(11, 17, "test") == clip).all()  # a pure function of the seed
    assert not (render_clip(11, 17, "train") == clip).all()  # splits use disjoint seeds


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
