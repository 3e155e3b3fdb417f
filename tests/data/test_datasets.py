"""Torch datasets of the world and the local media files."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from multimodal.data.datasets import WorldDataConfig, WorldDataset, collate_world, image_dataset, mixed_dataset, video_dataset
from multimodal.data.files import MediaError, read_image, read_media, read_video, write_mp4, write_png
from multimodal.data.render import render_sample
from multimodal.data.world import sample_video, split_seed


def test_items_have_the_documented_layout():
    img = image_dataset("validation", 4)[0]
    vid = video_dataset("validation", 4)[1]
    assert img["pixels"].shape == (3, 1, 64, 64) and img["pixels"].dtype == torch.float32
    assert vid["pixels"].shape == (3, 17, 64, 64)
    assert 0.0 <= float(vid["pixels"].min()) and float(vid["pixels"].max()) <= 1.0
    assert vid["seed"] == split_seed("validation", 1) and vid["kind"] == "video" and "motion" in vid["tags"]
    frames = render_sample(sample_video(vid["seed"]))
    assert torch.allclose(vid["pixels"], torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255, atol=1e-6)


def test_mixed_batches_group_by_frame_count():
    ds = mixed_dataset("train", 64, video_fraction=0.5)
    batch = next(iter(DataLoader(ds, batch_size=64, collate_fn=collate_world)))
    assert set(batch) == {1, 17}
    assert batch[1]["pixels"].shape[1:] == (3, 1, 64, 64) and batch[17]["pixels"].shape[1:] == (3, 17, 64, 64)
    assert len(batch[1]["caption"]) + len(batch[17]["caption"]) == 64
    assert 16 <= len(batch[17]["caption"]) <= 48
    assert set(next(iter(DataLoader(mixed_dataset("train", 8, video_fraction=0.0), batch_size=8, collate_fn=collate_world)))) == {1}


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="'dev'"):
        WorldDataConfig(split="dev")
    with pytest.raises(ValueError, match="'audio'"):
        WorldDataConfig(modality="audio")
    with pytest.raises(ValueError, match="-1"):
        WorldDataConfig(length=-1)
    with pytest.raises(ValueError, match="1.5"):
        WorldDataConfig(modality="mixed", video_fraction=1.5)
    with pytest.raises(IndexError):
        WorldDataset(length=3)[3]


def test_png_is_lossless_and_mp4_is_close(tmp_path):
    frames = render_sample(sample_video(split_seed("test", 5)))
    write_png(tmp_path / "a.png", frames[0])
    assert np.array_equal(read_image(tmp_path / "a.png")[0], frames[0])
    write_mp4(tmp_path / "a.mp4", frames)
    back = read_video(tmp_path / "a.mp4")
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 4.0
    assert np.array_equal(read_media(tmp_path / "a.mp4"), back)


def test_unreadable_media_raise_a_named_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(MediaError, match="broken.mp4"):
        read_video(bad)
    png = tmp_path / "broken.png"
    png.write_bytes(b"\x89PNG nonsense")
    with pytest.raises(MediaError, match="broken.png"):
        read_image(png)
    with pytest.raises(MediaError, match="unknown media type"):
        read_media(tmp_path / "x.txt")
