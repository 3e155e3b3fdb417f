"""Latents encoded once (`TrainConfig.latent_cache`): the same numbers as encoding every batch, a file that is reused
only for the weights and data it was made from, and a run that trains on it exactly like the run that encodes."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from multimodal.data.datasets import WorldDataConfig, WorldDataset
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.training.latent_cache import LatentDataset, cached_latents, encode_dataset
from multimodal.training.media_tasks import MEDIA_TASKS, MediaTask, encode_latents
from multimodal.training.metrics import read_metrics
from multimodal.training.trainer import Trainer

SMALL_AE = dict(channels=(8, 16, 16), latent_channels=16)
TOL = 1e-5      # fp32; batches of other sizes may sum convolutions in another order


@pytest.fixture(scope="module")
def autoencoder():
    torch.manual_seed(0)
    return CausalAutoencoder(AutoencoderConfig(**SMALL_AE)).eval()


def _videos(n=5):
    return WorldDataset(WorldDataConfig(split="train", modality="video", length=n))


def test_encoded_items_equal_encoding_the_batch(autoencoder):
    data = _videos(5)
    latents, offsets, indices = encode_dataset(autoencoder, data, 5, log=lambda s: None)
    assert latents.shape == (25, 16, 8, 8) and offsets.tolist() == [0, 5, 10, 15, 20, 25]
    assert indices.tolist() == [0, 1, 2, 3, 4]
    direct = encode_latents(autoencoder, torch.stack([data[i]["pixels"] for i in range(5)]))   # [5, C, 5, 8, 8]
    cached = LatentDataset(data, latents, offsets, indices)
    for i in range(5):
        assert cached[i]["caption"] == data[i]["caption"]
        torch.testing.assert_close(cached[i]["latents"], direct[i], atol=TOL, rtol=0)


def test_cut_latents_equal_encoding_the_cut_clip(autoencoder):
    """The causal autoencoder: the first 1 + k latent frames of a clip are the latents of its first 1 + 4k frames,
    which is what collating cached clips of different lengths relies on."""
    pixels = _videos(1)[0]["pixels"][None]                                           # [1, 3, 17, 64, 64]
    full = encode_latents(autoencoder, pixels)
    torch.testing.assert_close(full[:, :, :3], encode_latents(autoencoder, pixels[:, :, :9]), atol=TOL, rtol=0)


def test_collate_of_cached_items_matches_pixels(autoencoder):
    data = _videos(3)
    cached = LatentDataset(data, *encode_dataset(autoencoder, data, 3, log=lambda s: None))
    tok = type("Tok", (), {"encode": staticmethod(lambda text: [len(w) for w in text.split()])})()
    task = MediaTask(tokenizer=tok, autoencoder=autoencoder, name="video_to_text")
    from_latents = task.collate([cached[i] for i in range(3)], torch.device("cpu"))
    from_pixels = task.collate([data[i] for i in range(3)], torch.device("cpu"))
    assert from_latents["caption_ids"] == from_pixels["caption_ids"]
    torch.testing.assert_close(from_latents["latents"], encode_latents(autoencoder, from_pixels["pixels"]),
                               atol=TOL, rtol=0)


def test_file_is_reused_only_for_its_weights_and_data(tmp_path, autoencoder):
    path, logs = tmp_path / "video.safetensors", []
    first = cached_latents(path, autoencoder, _videos(4), items=3, log=logs.append)
    assert path.is_file() and len(first) == 3 and any("encoded 3 items" in line for line in logs)
    logs.clear()
    again = cached_latents(path, autoencoder, _videos(4), items=3, log=logs.append)
    assert logs == [] and torch.equal(again.latents, first.latents)                   # read back, not encoded
    torch.manual_seed(1)
    other = CausalAutoencoder(AutoencoderConfig(**SMALL_AE)).eval()
    redone = cached_latents(path, other, _videos(4), items=3, log=logs.append)
    assert any("other weights or data" in line for line in logs)
    assert not torch.allclose(redone.latents, first.latents)
    logs.clear()
    cached_latents(path, other, _videos(4), items=2, log=logs.append)                 # other data: fewer items
    assert any("other weights or data" in line for line in logs)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["items"] == "2"


def test_a_cached_run_trains_like_an_encoding_run(tmp_path, tiny_config):
    """With latent_cache = train_samples both runs draw the same items; only where the latents come from differs."""
    torch.manual_seed(0)
    ae_file = tmp_path / "ae.safetensors"
    CausalAutoencoder(AutoencoderConfig(**SMALL_AE)).save_pretrained(ae_file)
    cfg = tiny_config.replace(tasks={name: 1.0 for name in MEDIA_TASKS}, autoencoder=str(ae_file), train_samples=12,
                              micro_batch_size=2, grad_accum=2, max_steps=3)
    Trainer(cfg, tmp_path / "plain", log=lambda s: None).train()
    cached = Trainer(cfg.replace(latent_cache=12), tmp_path / "cached", log=lambda s: None)
    assert {k: len(v) for k, v in cached.train_data.items() if k != "mixed"} == {"image": 12, "video": 12}
    assert (tmp_path / "cached" / "latents" / "video.safetensors").is_file()
    cached.train()

    def losses(out):
        return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "plain"), rel=1e-4, abs=1e-5)


def test_config_sizes_the_kinds_apart_and_rejects_bad_values(tiny_config):
    cfg = tiny_config.replace(latent_cache={"video": 6})
    assert cfg.latent_cache_items("video") == 6 and cfg.latent_cache_items("image") == 0
    assert tiny_config.replace(latent_cache=5).latent_cache_items("image") == 5
    with pytest.raises(ValueError, match="'image' and/or 'video'"):
        tiny_config.replace(latent_cache={"audio": 3})
    with pytest.raises(ValueError, match="latent_cache must be an integer"):
        tiny_config.replace(latent_cache=-1)
    with pytest.raises(ValueError, match="flow_head"):
        tiny_config.replace(flow_head=[192])
    repeats = tiny_config.replace(flow_repeats={"image": 3})
    assert repeats.flow_repeats_of("image") == 3 and repeats.flow_repeats_of("video") == 1
    assert tiny_config.replace(flow_repeats=2).flow_repeats_of("video") == 2
    with pytest.raises(ValueError, match="flow_repeats"):
        tiny_config.replace(flow_repeats={"image": 0})


def test_flow_head_overrides_size_both_heads(tmp_path, tiny_config):
    torch.manual_seed(0)
    ae_file = tmp_path / "ae.safetensors"
    CausalAutoencoder(AutoencoderConfig(**SMALL_AE)).save_pretrained(ae_file)
    cfg = tiny_config.replace(tasks={"text_to_image": 1.0, "video_to_text": 1.0}, autoencoder=str(ae_file),
                              flow_head={"width": 48, "depth": 2}, latent_cache={"video": 4}, max_steps=1)
    trainer = Trainer(cfg, tmp_path / "run", log=lambda s: None)
    for head in (trainer.model.config.image_head, trainer.model.config.video_head):
        assert (head.width, head.depth) == (48, 2)
    assert len(trainer.train_data["video"]) == 4 and len(trainer.train_data["image"]) == cfg.train_samples
    apart = cfg.replace(flow_head={"image": {"width": 48}, "video": {"depth": 3}})
    assert apart.flow_head_overrides("image") == {"width": 48} and apart.flow_head_overrides("video") == {"depth": 3}
    with pytest.raises(ValueError, match="per head"):
        cfg.replace(flow_head={"image": 48})
