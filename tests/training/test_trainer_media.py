"""The multimodal task mix on the unified model with a (small, untrained) causal autoencoder: every task's loss
is logged and evaluated, resume stays exact although the flow-matching loss draws noise, the final model reloads;
`multimodal train autoencoder` delegates to the autoencoder's own loop."""

from __future__ import annotations

import json
import shutil

import torch
from PIL import Image

from multimodal.cli import main
from multimodal.model import UnifiedModel
from multimodal.pipelines import ImageCaptionPipeline
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.training.media_tasks import MEDIA_TASKS
from multimodal.training.metrics import read_metrics
from multimodal.training.trainer import Trainer

from .conftest import SMALL_AE


def _mix(tiny_config, autoencoder_file, **changes):
    tasks = {"text": 1.0, **{name: 1.0 for name in MEDIA_TASKS}}
    return tiny_config.replace(tasks=tasks, autoencoder=str(autoencoder_file), micro_batch_size=2, grad_accum=3,
                               **changes)


def test_every_task_trains_and_the_model_reloads(tmp_path, tiny_config, autoencoder_file):
    # more scored images than the loss batches' validation items (eval_batches * micro_batch_size = 2): the split
    # grows to hold them, so all 3 are distinct
    cfg = _mix(tiny_config, autoencoder_file, max_steps=6, eval_every=6, score_samples={"image": 3, "video": 1},
               score_steps=2)
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
    # the scorer hooks ran: accuracy in [0, 1] for generation, caption metrics for captioning (untrained: ~0)
    for name in ("text_to_image", "text_to_video"):
        assert 0.0 <= final[f"eval/accuracy/{name}"] <= 1.0
    for name in ("image_to_text", "video_to_text"):
        assert {f"eval/{m}/{name}" for m in ("exact", "slot_f1", "bleu4", "cider_d")} <= set(final)
    assert {k: v for k, v in final.items() if k.startswith("eval/scored/")} == {
        "eval/scored/text_to_image": 3, "eval/scored/image_to_text": 3,
        "eval/scored/text_to_video": 1, "eval/scored/video_to_text": 1}
    assert len({trainer.val_data["image"][i]["seed"] for i in range(3)}) == 3
    assert final["train_minutes"] == trainer.train_seconds / 60
    with Image.open(tmp_path / "mix" / "learning_curve.png") as img:        # the three score families
        assert img.size == (900, 3 * 240)
    assert all(torch.equal(v, trainer.autoencoder.state_dict()[k]) for k, v in frozen.items())
    pipe = ImageCaptionPipeline.from_pretrained(tmp_path / "mix" / "pipeline")
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, pipe.model.state_dict()[key]), key
    assert pipe.vae.config.channels == SMALL_AE["channels"] and pipe.scheduler is not None


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


def test_media_tasks_on_a_user_folder(tmp_path, tiny_config, autoencoder_file):
    import numpy as np

    from multimodal.io import write_image, write_video

    root = tmp_path / "mine"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):                                    # odd sizes: centre-cropped and resized to 64 x 64
        write_image(root / f"img{i}.png", rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
        (root / f"img{i}.txt").write_text(f"picture number {i}")
    write_video(root / "clip.mp4", rng.integers(0, 255, (12, 40, 40, 3), dtype=np.uint8), fps=8)
    (root / "clip.txt").write_text("a short clip")
    cfg = tiny_config.replace(data=str(root), tasks={"text_to_image": 1.0, "image_to_text": 1.0, "video_to_text": 1.0},
                              autoencoder=str(autoencoder_file), micro_batch_size=2, grad_accum=3, max_steps=2)
    trainer = Trainer(cfg, tmp_path / "out", log=lambda s: None)
    assert trainer.train().step == 2
    records = [r for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if r["kind"] == "train"]
    seen = {k for r in records for k in r if k.startswith("loss/")}
    assert seen and seen <= {"loss/video_to_text", "loss/image_to_text", "loss/text_to_image"}
    assert all(torch.isfinite(torch.tensor(r[k])) for r in records for k in r if k.startswith("loss/"))
    assert trainer.train_data["video"][0]["pixels"].shape == (3, 9, 64, 64)   # 12 frames -> the 1 + 4k prefix
