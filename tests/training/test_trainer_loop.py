"""The training loop: learning, determinism, gradient accumulation, clipping, evaluation hooks, metrics and plot,
in-process resume, write failures during a run, precision choice."""

from __future__ import annotations

import errno
import shutil
from contextlib import nullcontext

import pytest
import torch
from PIL import Image

from multimodal.training import checkpoint as ckpt
from multimodal.training.checkpoint import CheckpointWriteError, latest_checkpoint
from multimodal.training.metrics import read_metrics
from multimodal.training.precision import bf16_speedup, choose_precision
from multimodal.training.trainer import Trainer, autocast_dtype


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


def test_short_run_learns_and_writes_everything(tmp_path, tiny_config):
    cfg = tiny_config.replace(max_steps=12, micro_batch_size=4, eval_every=6, save_every=6)
    result = Trainer(cfg, tmp_path / "run", log=lambda s: None).train()
    out = tmp_path / "run"
    losses = _losses(out)
    assert result.step == 12 and result.stop_reason == "max_steps" and len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3          # it learns the captions
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12] and evals[1]["eval/lm/text"] < evals[0]["eval/lm/text"]
    rec = read_metrics(out / "metrics.jsonl")[0]
    assert {"lr", "grad_norm", "tokens_per_s", "steps_per_s", "loss/text", "expert_load_max_over_mean"} <= set(rec)
    with Image.open(out / "metrics.png") as img:
        assert img.format == "PNG" and img.width == 900 and img.height >= 480
    assert latest_checkpoint(out / "checkpoints").name == "step_00000012"
    assert {p.name for p in (out / "model").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_same_seed_same_losses_other_seed_differs(tmp_path, tiny_config):
    a = Trainer(tiny_config, tmp_path / "a", log=lambda s: None)
    a.train()
    b = Trainer(tiny_config, tmp_path / "b", log=lambda s: None)
    b.train()
    c = Trainer(tiny_config.replace(seed=1), tmp_path / "c", log=lambda s: None)
    c.train()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert _losses(tmp_path / "a") != _losses(tmp_path / "c")


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_config):
    cfg = tiny_config.replace(max_steps=1, mtp_weight=0.0, grad_clip=0.0, router_bias_update=False)
    big = Trainer(cfg.replace(micro_batch_size=4, grad_accum=1), tmp_path / "big", log=lambda s: None)
    acc = Trainer(cfg.replace(micro_batch_size=2, grad_accum=2), tmp_path / "acc", log=lambda s: None)
    # the two streams must serve the same 4 captions
    assert big.streams["text"].take(4) == acc.streams["text"].take(2) + acc.streams["text"].take(2)
    big.streams["text"].load_state_dict({"epoch": 0, "offset": 0})
    acc.streams["text"].load_state_dict({"epoch": 0, "offset": 0})
    rb, ra = big.train_step(), acc.train_step()
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
    assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)
    for (name, p), q in zip(big.model.named_parameters(), acc.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_clipping_bounds_the_gradient_norm(tmp_path, tiny_config):
    trainer = Trainer(tiny_config.replace(grad_clip=0.01), tmp_path / "r", log=lambda s: None)
    task = trainer.tasks["text"]
    loss, _ = task.loss(trainer.model, task.collate(trainer._items("text", 2), trainer.device))
    loss.backward()
    before = trainer.clip_gradients()
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()
                                                  if p.grad is not None]))
    assert before > 0.05 and float(after) == pytest.approx(0.01, rel=1e-3)


def test_evaluators_are_called_and_do_not_disturb_training(tmp_path, tiny_config):
    calls = []

    def noisy_scorer(trainer):
        calls.append(trainer.step)
        return {"score": float(torch.rand(()) * 0 + 0.5), "draws": float(torch.randn(5).sum() * 0)}

    cfg = tiny_config.replace(eval_every=2)
    Trainer(cfg, tmp_path / "plain", log=lambda s: None).train()
    t = Trainer(cfg, tmp_path / "hooked", evaluators=[noisy_scorer], log=lambda s: None)
    state = torch.get_rng_state()
    t.evaluate()
    assert torch.equal(state, torch.get_rng_state())                   # RNG forked around evaluation
    t.train()
    assert calls == [0, 2, 4]
    evals = [r for r in read_metrics(tmp_path / "hooked" / "metrics.jsonl") if r["kind"] == "eval"]
    assert all(r["eval/score"] == 0.5 and "eval/loss/text" in r for r in evals)
    assert _losses(tmp_path / "plain") == _losses(tmp_path / "hooked")


def test_resume_in_process_continues_exactly(tmp_path, tiny_config):
    cfg = tiny_config.replace(max_steps=6, save_every=3, keep_checkpoints=3)
    Trainer(cfg, tmp_path / "full", log=lambda s: None).train()
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000006")   # as if the run died after step 3's save
    (tmp_path / "cut" / "checkpoints" / "latest").unlink()
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(cfg, tmp_path / "cut", log=lambda s: None)
    with pytest.raises(ValueError, match=r"the recipe changed \(lr: 0.003 -> 0.001\)"):
        Trainer(cfg.replace(lr=1e-3), tmp_path / "cut", resume=True, log=lambda s: None)
    resumed = Trainer(cfg, tmp_path / "cut", resume=True, log=lambda s: None)
    assert resumed.step == 3
    resumed.train()
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")       # log truncated, then the same steps


def test_eval_records_carry_training_time_and_resume_continues_it(tmp_path, tiny_config):
    """`train_minutes` / `cpu_minutes` of an eval line = the time inside updates so far: the train line of the same
    step's `elapsed_s`, evaluation excluded, and a resumed run continues the count from its checkpoint."""
    cfg = tiny_config.replace(max_steps=6, eval_every=3, save_every=3, keep_checkpoints=3)
    full = Trainer(cfg, tmp_path / "full", log=lambda s: None)
    result = full.train()
    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    train = {r["step"]: r for r in records if r["kind"] == "train"}
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert r["train_minutes"] * 60 == pytest.approx(train[r["step"]]["elapsed_s"], rel=1e-12)
        assert r["cpu_minutes"] > 0
    assert 0 < evals[0]["train_minutes"] < evals[1]["train_minutes"] == pytest.approx(result.train_seconds / 60)
    assert evals[0]["cpu_minutes"] < evals[1]["cpu_minutes"]
    # the evaluation at step 3 is not counted: step 4 adds exactly its own update time
    assert train[4]["elapsed_s"] - train[3]["elapsed_s"] == pytest.approx(1 / train[4]["steps_per_s"], rel=1e-6)

    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000006")   # as if the run died after step 3's save
    (tmp_path / "cut" / "checkpoints" / "latest").unlink()
    resumed = Trainer(cfg, tmp_path / "cut", resume=True, log=lambda s: None)
    assert resumed.train_seconds == pytest.approx(evals[0]["train_minutes"] * 60, rel=1e-12)
    assert resumed.cpu_seconds == pytest.approx(evals[0]["cpu_minutes"] * 60, rel=1e-12)
    resumed.train()
    after = [r for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in after] == [3, 6] and after[0] == evals[0]
    assert after[1]["train_minutes"] > after[0]["train_minutes"] and after[1]["cpu_minutes"] > after[0]["cpu_minutes"]
    assert not (tmp_path / "cut" / "learning_curve.png").exists()           # nothing scored: no learning curve


def test_disk_full_during_a_run_keeps_the_previous_checkpoint(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config.replace(max_steps=4, save_every=2)
    trainer = Trainer(cfg, tmp_path / "r", log=lambda s: None)
    trainer.train_step(), trainer.train_step()
    first = trainer.save()
    trainer.train_step()
    real = ckpt.save_file

    def full_disk(tensors, filename, *args, **kwargs):
        if filename.endswith("optimizer.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(CheckpointWriteError, match="step_00000003"):
        trainer.save()
    monkeypatch.setattr(ckpt, "save_file", real)
    assert latest_checkpoint(tmp_path / "r" / "checkpoints") == first
    assert Trainer(cfg, tmp_path / "r", resume=True, log=lambda s: None).step == 2


def test_precision_choice_and_bf16_autocast_step(tmp_path, tiny_config, monkeypatch):
    from multimodal.training import precision

    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert choose_precision("auto", cpu, speedup=3.0).dtype is None      # a fast matmul does not make a fast step
    assert choose_precision("bf16", cpu, speedup=0.8).dtype is torch.bfloat16       # asked for, not much slower
    slow = choose_precision("bf16", cpu, speedup=0.01)                                # AVX2 only: ~100x slower
    assert slow.dtype is None and "0.01x" in slow.reason and slow.reason.startswith("warning:")
    with pytest.raises(ValueError, match="'fp16'"):
        choose_precision("fp16", cpu)
    measured = bf16_speedup("cpu", (64, 64, 64), 1)               # the real timing (tests/conftest.py patches the
    # module's name, so that "auto" stays fp32 in other tests)
    assert 0 < measured < float("inf")

    monkeypatch.setattr(precision, "bf16_speedup", lambda *a, **k: 1.0)
    lines: list[str] = []
    trainer = Trainer(tiny_config.replace(precision="bf16", max_steps=2), tmp_path / "bf16", log=lines.append)
    assert trainer.amp_dtype is torch.bfloat16 and lines[0].startswith("precision 'bf16': a bf16 matmul ran 1.00x")
    record = trainer.train_step()
    assert torch.isfinite(torch.tensor(record["loss"])) and record["loss"] > 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())   # master weights stay fp32
    trainer.save()

    monkeypatch.setattr(precision, "bf16_speedup", lambda *a, **k: 0.01)      # resumed on a CPU where bf16 is slow
    lines.clear()
    trainer = Trainer(tiny_config.replace(precision="bf16", max_steps=2), tmp_path / "bf16", resume=True,
                      log=lines.append)
    assert trainer.step == 1 and trainer.amp_dtype is None
    assert len([line for line in lines if "training in fp32 instead" in line]) == 1
    trainer.train_step()


def test_muon_run_learns(tmp_path, tiny_config):
    cfg = tiny_config.replace(optimizer="muon", max_steps=8, micro_batch_size=4, lr=2e-2)
    Trainer(cfg, tmp_path / "m", log=lambda s: None).train()
    losses = _losses(tmp_path / "m")
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3


def test_stop_request_ends_cleanly_with_a_checkpoint(tmp_path, tiny_config):
    def stop_at_two(trainer):                  # what the CLI's SIGTERM / Ctrl-C handler does, from an evaluator
        if trainer.step == 2:
            trainer.stop_requested = True
        return {}

    cfg = tiny_config.replace(max_steps=10, eval_every=1)
    result = Trainer(cfg, tmp_path / "r", evaluators=[stop_at_two], log=lambda s: None).train()
    assert result.stop_reason == "stop_requested" and result.step == 2
    assert latest_checkpoint(tmp_path / "r" / "checkpoints").name == "step_00000002"
    assert not (tmp_path / "r" / "model").exists()                       # only a finished run exports
    with pytest.raises(ValueError, match="CUDA is not available") if not torch.cuda.is_available() else nullcontext():
        Trainer(cfg.replace(device="cuda"), tmp_path / "gpu", log=lambda s: None)
