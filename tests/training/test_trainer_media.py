"""The multimodal task mix on the unified model with a (small, untrained) causal autoencoder: every task's loss
is logged and evaluated, resume stays exact although the flow-matching loss draws noise, the final model reloads;
`multimodal train autoencoder` delegates to the autoencoder's own loop."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from multimodal.cli import main
from multimodal.model import UnifiedModel
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.training.media_tasks import MEDIA_TASKS
from multimodal.training.metrics import read_metrics
from multimodal.training.trainer import Trainer

SMALL_AE = dict(channels=(8, 16, 16), latent_channels=16)


@pytest.fixture(scope="module")
def autoencoder_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    CausalAutoencoder(AutoencoderConfig(**SMALL_AE)).save_pretrained(path)
    return path


def _mix(tiny_config, autoencoder_file, **changes):
    tasks = {"text": 1.0, **{name: 1.0 for name in MEDIA_TASKS}}
    return tiny_config.replace(tasks=tasks, autoencoder=str(autoencoder_file), micro_batch_size=2, grad_accum=3,
                               **changes)


def test_every_task_trains_and_the_model_reloads(tmp_path, tiny_config, autoencoder_file):
    cfg = _mix(tiny_config, autoencoder_file, max_steps=6, eval_every=6)
    trainer = Trainer(cfg, tmp_path / "mix", log=lambda s: None)
    assert isinstance(trainer.model, UnifiedModel)
    assert not any(p.requires_grad for p in trainer.autoencoder.parameters())
    frozen = {k: v.clone() for k, v in trainer.autoencoder.state_dict().items()}
    trainer.train()
    records = read_metrics(tmp_path / "mix" / "metrics.jsonl")
    seen = {k.split("/", 1)[1] for r in records if r["kind"] == "train" for k in r if k.startswith("loss/")}
    assert seen == {"text", *MEDIA_TASKS}
    final = [r for r in records if r["kind"] == "eval"][-1]
    assert {f"eval/loss/{name}" for name in ("text", *MEDIA_TASKS)} <= set(final)
    assert all(torch.equal(v, trainer.autoencoder.state_dict()[k]) for k, v in frozen.items())
    reloaded = UnifiedModel.from_pretrained(tmp_path / "mix" / "model")
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_media_resume_is_exact(tmp_path, tiny_config, autoencoder_file):
    cfg = _mix(tiny_config, autoencoder_file, max_steps=4, save_every=2, keep_checkpoints=2)
    Trainer(cfg, tmp_path / "full", log=lambda s: None).train()
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000004")
    (tmp_path / "cut" / "checkpoints" / "latest").unlink()
    Trainer(cfg, tmp_path / "cut", resume=True, log=lambda s: None).train()

    def losses(out):
        return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert len(losses(tmp_path / "full")) == 4 and losses(tmp_path / "cut") == losses(tmp_path / "full")


def test_train_autoencoder_command_delegates(tmp_path, capsys):
    cfg = tmp_path / "ae.json"
    cfg.write_text(json.dumps({"video_batch": 1, "image_batch": 1, "video_frames": 5, "stats_clips": 2,
                               "threads": 1, "warmup_steps": 1, "model": {"channels": [8, 16, 16]}}))
    out = tmp_path / "ae"
    assert main(["train", "autoencoder", "--config", str(cfg), "--out", str(out), "--max-steps", "2"]) == 0
    assert "steps 2" in capsys.readouterr().out
    model = CausalAutoencoder.from_pretrained(out / "autoencoder.safetensors")
    assert model.config.channels == (8, 16, 16)
    cfg.write_text(json.dumps({"video_batches": 1}))
    assert main(["train", "autoencoder", "--config", str(cfg), "--out", str(out)]) == 2
    assert "unknown AutoencoderTrainConfig keys: ['video_batches']" in capsys.readouterr().err
