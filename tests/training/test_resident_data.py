"""Training data held on the device (`TrainConfig.resident_data`): the same items in the same order as the list path,
the same losses, parallel rendering that encodes the same latents, and (where CUDA is present) an update that never
waits for the host."""

from __future__ import annotations

import pytest
import torch

from multimodal.data.datasets import WorldDataConfig, WorldDataset
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.training.latent_cache import LatentDataset, encode_dataset
from multimodal.training.media_tasks import MEDIA_TASKS
from multimodal.training.metrics import read_metrics
from multimodal.training.resident_data import ResidentMedia
from multimodal.training.tasks import SampleStream
from multimodal.training.trainer import Trainer

from .conftest import SMALL_AE


def test_take_tensor_equals_take_across_epochs():
    a, b = SampleStream(7, seed=3), SampleStream(7, seed=3)
    for n in (3, 5, 9, 1, 7):
        assert b.take_tensor(n, "cpu").tolist() == a.take(n)
    assert a.state_dict() == b.state_dict()
    b.load_state_dict(a.state_dict())
    assert b.take_tensor(4, "cpu").tolist() == a.take(4)


def test_parallel_rendering_encodes_the_same_latents():
    torch.manual_seed(0)
    ae = CausalAutoencoder(AutoencoderConfig(**SMALL_AE)).eval()
    videos = WorldDataset(WorldDataConfig(split="train", modality="video", length=6))
    serial = encode_dataset(ae, videos, 6, log=lambda s: None)
    parallel = encode_dataset(ae, videos, 6, log=lambda s: None, workers=2, batch=4)
    for name, x, y in zip(("latents", "offsets", "indices"), serial, parallel):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=name)


def test_resident_batches_hold_the_items_of_the_stream(tmp_path, tiny_config, autoencoder_file):
    cfg = tiny_config.replace(tasks={name: 1.0 for name in MEDIA_TASKS}, autoencoder=str(autoencoder_file), train_samples=12,
                              latent_cache=12, resident_data=True, micro_batch_size=3)
    trainer = Trainer(cfg, tmp_path / "r", log=lambda s: None)
    data, media = trainer.train_data["video"], trainer.resident["video_to_text"]
    assert trainer.resident["text_to_video"] is media
    assert isinstance(data, LatentDataset) and len(media) == 12
    index = torch.tensor([4, 0, 11])
    batch = media.batch(index)
    for row, i in enumerate(index.tolist()):
        item = data[i]
        assert torch.equal(batch["latents"][row], item["latents"])
        ids = trainer.tokenizer.encode(item["caption"])[:cfg.seq_len]
        assert batch["captions"].ids[row, :len(ids)].tolist() == ids and batch["captions"].lengths[row] == len(ids)


def test_resident_run_trains_like_the_list_run(tmp_path, tiny_config, autoencoder_file):
    """Same items, same noise, same sequences (captions cut to the batch's longest), so the very same losses: only
    where the batch is assembled differs."""
    cfg = tiny_config.replace(tasks={name: 1.0 for name in MEDIA_TASKS}, autoencoder=str(autoencoder_file),
                              train_samples=12, latent_cache=12, micro_batch_size=2, grad_accum=3, max_steps=3)
    Trainer(cfg, tmp_path / "plain", log=lambda s: None).train()
    Trainer(cfg.replace(resident_data=True), tmp_path / "resident", log=lambda s: None).train()

    def records(out):
        return [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    plain, resident = records(tmp_path / "plain"), records(tmp_path / "resident")
    assert [r["loss"] for r in resident] == [r["loss"] for r in plain]
    assert [r["tokens"] for r in resident] == [r["tokens"] for r in plain]


def test_resident_text_batches_equal_collated_captions(tmp_path, tiny_config, autoencoder_file):
    """The language-modelling task reads the resident captions of both kinds: the same tensors as `TextTask.collate`
    of those captions, and the same count of predicted tokens."""
    cfg = tiny_config.replace(tasks={"text": 1.0, "image_to_text": 1.0, "text_to_video": 1.0},
                              autoencoder=str(autoencoder_file), train_samples=12, latent_cache=12, resident_data=True)
    trainer = Trainer(cfg, tmp_path / "r", log=lambda s: None)
    text = trainer.resident["text"]
    assert len(text) == 24 and len(trainer.streams["text"].take(24)) == 24
    rows = [trainer.train_data["image"].caption(i) for i in range(12)] + \
        [trainer.train_data["video"].caption(i) for i in range(12)]
    index = torch.tensor([3, 20, 0, 13])
    got = text.batch(index, index)
    want = trainer.tasks["text"].collate([rows[i] for i in index.tolist()], trainer.device)
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["attention_mask"], want["attention_mask"])
    assert got["predicted"] == want["predicted"]
    record = trainer.train_step()
    assert record["tokens"] > 0 and all(v == v for k, v in record.items() if k.startswith("loss"))


def test_resident_data_rejects_clips_of_several_lengths():
    latents = torch.zeros(1 + 2, 16, 2, 2)          # item 0: one latent frame, item 1: two
    data = LatentDataset(WorldDataset(WorldDataConfig(split="train", modality="video", length=2)), latents,
                         torch.tensor([0, 1, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"one latent length.*\[1, 2\]"):
        ResidentMedia.from_latents(data, None, 16, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the host-synchronisation check needs CUDA")
def test_update_never_waits_for_the_host(tmp_path, tiny_config, autoencoder_file, monkeypatch):
    """Every part of an update (batch gathering, sequence building, forward, backward, clipping, fused AdamW, EMA,
    router biases) runs under `torch.cuda.set_sync_debug_mode("error")`. The MoE op's choice of path measures once
    per shape bucket, which reads timings on the host by design (tests/kernels/test_moe_choice.py); a batch of a
    new length could meet a new bucket here, so the table is frozen for the checked update."""
    from multimodal.kernels.moe.choice import CHOICES

    cfg = tiny_config.replace(tasks={"text": 1.0, **{name: 1.0 for name in MEDIA_TASKS}}, autoencoder=str(autoencoder_file),
                              train_samples=128,
                              latent_cache=128, resident_data=True, micro_batch_size=8, grad_accum=4, device="cuda",
                              precision="bf16", ema_decay=0.99)
    trainer = Trainer(cfg, tmp_path / "r", log=lambda s: None)
    for _ in range(2):                              # compile the kernels
        trainer.train_step()
    for stream in trainer.streams.values():         # upload every stream's permutation (once per epoch); no stream
        stream.take_tensor(1, "cuda")               # reaches the end of its epoch below (3 x 4 x 8 < 128)
    monkeypatch.setattr(CHOICES, "device_types", set())    # measured keys stay; a new one takes the default path
    torch.cuda.synchronize()
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.update()
    finally:
        torch.cuda.set_sync_debug_mode(before)
