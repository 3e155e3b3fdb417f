"""The training curriculum (training/curriculum.py) and the flow loss's Min-SNR weighting: bad stages and mixes are
rejected by name; items are labelled from their captions; a one-stage curriculum allowing everything trains exactly
like none; each stage draws only its items and its mix, and a resume inside a later stage continues exactly; the
weighting is the plain loss when off, normalised when on, and never changes the reported validation loss."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from multimodal.data.world import sample_image, sample_video, split_seed
from multimodal.decoders.flow import FlowHeadConfig, FlowTransformer, flow_matching_loss, loss_weights, sample_sigmas
from multimodal.training.curriculum import Curriculum, item_stage, parse_curriculum
from multimodal.training.media_tasks import MEDIA_TASKS
from multimodal.training.metrics import read_metrics
from multimodal.training.tasks import SampleStream
from multimodal.training.trainer import Trainer


def _media(tiny_config, autoencoder_file, **changes):
    tasks = {"text": 1.0, **{name: 1.0 for name in MEDIA_TASKS}}
    changes = {"tasks": tasks, "latent_cache": {"image": 24, "video": 12}, **changes}
    return tiny_config.replace(autoencoder=str(autoencoder_file), micro_batch_size=2, grad_accum=2, **changes)


def _train_records(out) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.parametrize("stages, message", [
    ([{"updates": 2, "image": ["singles"]}], r"curriculum stage 1: unknown image stage\(s\) \['singles'\]"),
    ([{"updates": 2}, {"video": ["still", "fast"]}], r"curriculum stage 2: unknown video stage\(s\) \['fast'\]"),
    ([{"updates": 2, "tasks": {"text_to_audio": 1.0}}], r"unknown task\(s\) \['text_to_audio'\] in 'tasks'"),
    ([{"updates": 2, "tasks": {"video_to_text": 1.0}}], r"unknown task\(s\) \['video_to_text'\]"),
    ([{"updates": 2, "stage": "single"}], r"curriculum stage 1: unknown key\(s\) \['stage'\]"),
    ([{"image": ["single"]}, {}], r"curriculum stage 1: 'updates' is required on every stage but the last"),
    ([{"updates": 0}], r"'updates' must be an integer > 0, got 0"),
    ([{"updates": 2, "image": "single"}], r"'image' must be a non-empty list"),
    ([{"updates": 2, "tasks": {"text": 0.0}}], r"task weights must be >= 0 and not all 0"),
    ([{"updates": 2, "narrow": ["image_to_txt"]}], r"unknown task\(s\) \['image_to_txt'\] in 'narrow'; the run's "
                                                    r"media tasks are \['text_to_image'\]"),
    ([{"updates": 2, "narrow": ["text"]}], r"unknown task\(s\) \['text'\] in 'narrow'"),
    ([{"updates": 2, "narrow": ["video_to_text"]}], r"unknown task\(s\) \['video_to_text'\] in 'narrow'"),
    ([{"updates": 2, "narrow": "text_to_image"}], r"'narrow' must be a non-empty list of media task names"),
])
def test_bad_curricula_are_rejected_by_name(tiny_config, stages, message):
    cfg = tiny_config.replace(tasks={"text": 1.0, "text_to_image": 1.0, "video_to_text": 0.0})
    with pytest.raises(ValueError, match=message):
        cfg.replace(curriculum=stages)
    with pytest.raises(ValueError, match="flow_weighting must be one of"):
        cfg.replace(flow_weighting="snr")


def test_items_are_labelled_from_their_world_captions():
    for i in range(60):
        image = sample_image(split_seed("train", i))
        assert item_stage(image.caption, "image") == image.kind
        video = sample_video(split_seed("train", i))
        still = all(o.motion == "stays still" for o in video.objects)
        assert item_stage(video.caption, "video") == ("still" if still else "moving")
    with pytest.raises(ValueError, match="'a photo of a cat' is not in the world's grammar"):
        item_stage("a photo of a cat", "image")
    with pytest.raises(ValueError, match="describes a clip"):
        item_stage(sample_video(split_seed("train", 0)).caption, "image")


def test_stage_boundaries_and_subsets():
    curriculum = Curriculum(parse_curriculum([{"updates": 3, "image": ["single"]},
                                              {"updates": 2, "image": ["count", "single"]}, {}], ["text_to_image"]))
    assert [curriculum.stage_at(s) for s in range(8)] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert curriculum.stages[1].image == ("single", "count")                    # canonical order
    labels = curriculum.label_items("image", 40, lambda i: sample_image(split_seed("train", i)).caption)
    for index, allowed in enumerate([{"single"}, {"single", "count"}, {"single", "count", "relation"}]):
        subset = curriculum.subset(index, "image").tolist()
        assert subset == [i for i, kind in enumerate(labels) if kind in allowed]
    none_still = Curriculum(parse_curriculum([{"video": ["still"]}], ["text_to_video"]))
    none_still.label_items("video", 1, lambda i: "a red circle moves left")
    with pytest.raises(ValueError, match="curriculum stage 1: none of the 1 video training items is still"):
        none_still.subset(0, "video")


def test_one_stage_allowing_everything_trains_like_no_curriculum(tmp_path, tiny_config, autoencoder_file):
    cfg = _media(tiny_config, autoencoder_file, max_steps=4)
    Trainer(cfg, tmp_path / "plain", log=lambda s: None).train()
    Trainer(cfg.replace(curriculum=[{}]), tmp_path / "staged", log=lambda s: None).train()
    plain, staged = _train_records(tmp_path / "plain"), _train_records(tmp_path / "staged")
    assert [r["loss"] for r in staged] == [r["loss"] for r in plain]


def test_each_stage_draws_its_items_and_mix_and_resume_continues_exactly(tmp_path, tiny_config, autoencoder_file,
                                                                         monkeypatch):
    stages = [{"updates": 2, "image": ["single"], "video": ["still"], "tasks": {"image_to_text": 1.0}},
              {"updates": 2, "image": ["relation"], "video": ["moving"]}]
    cfg = _media(tiny_config, autoencoder_file, max_steps=6, save_every=3, keep_checkpoints=3,
                 latent_cache={"image": 24, "video": 40}, curriculum=stages)
    logs: list[str] = []
    trainer = Trainer(cfg, tmp_path / "full", log=logs.append)
    drawn: list[tuple[int, str, list[int]]] = []
    take = SampleStream.take

    def spy(stream, n):
        indices = take(stream, n)
        name = next(k for k, s in trainer.streams.items() if s is stream)
        drawn.append((trainer.step, name, indices))
        return indices

    monkeypatch.setattr(SampleStream, "take", spy)
    trainer.train()
    assert trainer.stage == 1
    labels = trainer.curriculum.labels
    assert {name for step, name, _ in drawn if step < 2} == {"image_to_text"}
    assert {MEDIA_TASKS[name][0] for step, name, _ in drawn if step >= 2 and name != "text"} == {"image", "video"}
    for step, name, indices in drawn:
        if name == "text":
            continue
        kind = MEDIA_TASKS[name][0]
        want = ({"image": "single", "video": "still"} if step < 2 else {"image": "relation", "video": "moving"})[kind]
        assert {labels[kind][i] for i in indices} == {want}, (step, name)
    records = _train_records(tmp_path / "full")
    assert all(set(k for k in r if k.startswith("loss/")) == {"loss/image_to_text"} for r in records[:2])
    assert len({k for r in records[2:] for k in r if k.startswith("loss/")}) > 1           # the run's own mix again
    assert any("curriculum stage 2/2 from update 2: image relation; video moving" in line for line in logs)
    # a run resumed at step 3 (inside stage 2) continues exactly
    monkeypatch.undo()
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_00000006")
    (tmp_path / "cut" / "checkpoints" / "latest").unlink()
    resumed = Trainer(cfg, tmp_path / "cut", resume=True, log=lambda s: None)
    assert resumed.step == 3 and resumed.stage == 1
    resumed.train()
    assert [r["loss"] for r in _train_records(tmp_path / "cut")] == [r["loss"] for r in records]


def test_a_stage_narrowing_some_tasks_leaves_the_others_every_item(tmp_path, tiny_config, autoencoder_file,
                                                                   monkeypatch):
    """`narrow`: relation images for the image captions alone; the pictures keep drawing every kind."""
    stages = [{"updates": 3, "image": ["relation"], "narrow": ["image_to_text"]}]
    cfg = _media(tiny_config, autoencoder_file, max_steps=3, latent_cache={"image": 40, "video": 12}, curriculum=stages,
                 tasks={"text_to_image": 1.0, "image_to_text": 1.0})
    logs: list[str] = []
    trainer = Trainer(cfg, tmp_path / "n", log=logs.append)
    drawn: dict[str, list[int]] = {"text_to_image": [], "image_to_text": []}
    take = SampleStream.take

    def spy(stream, n):
        indices = take(stream, n)
        name = next((k for k, s in trainer.streams.items() if s is stream), None)
        drawn.setdefault(name, []).extend(indices)
        return indices

    monkeypatch.setattr(SampleStream, "take", spy)
    trainer.train()
    labels = trainer.curriculum.labels["image"]
    assert drawn["image_to_text"] and {labels[i] for i in drawn["image_to_text"]} == {"relation"}
    assert trainer.streams["text_to_image"].length == 40
    assert trainer.streams["image_to_text"].length == labels.count("relation") < 40
    assert any("image relation; for image_to_text" in line for line in logs)
    stage = trainer.curriculum.stages[0]
    assert stage.allows("image", "text_to_image") == ("single", "count", "relation")
    assert stage.allows("image", "image_to_text") == stage.allows("image") == ("relation",)


def test_a_stage_with_resident_data_draws_only_its_items_on_the_device(tmp_path, tiny_config, autoencoder_file):
    """Resident streams index the cached latents (the first items of the training data), so the stage's subset is
    taken from those items alone, never past them."""
    cfg = _media(tiny_config, autoencoder_file, tasks={"text_to_image": 1.0}, train_samples=40, resident_data=True,
                 latent_cache={"image": 12, "video": 0}, curriculum=[{"image": ["single"]}])
    trainer = Trainer(cfg, tmp_path / "r", log=lambda s: None)
    labels = trainer.curriculum.labels["image"]
    assert len(labels) == len(trainer.resident["text_to_image"]) == 12
    stream = trainer.streams["text_to_image"]
    drawn = stream.take_tensor(2 * stream.length, "cpu").tolist()
    assert sorted(set(drawn)) == [i for i, kind in enumerate(labels) if kind == "single"]


def test_min_snr_weighting_off_is_the_plain_loss_on_is_normalised():
    torch.manual_seed(0)
    head = FlowTransformer(FlowHeadConfig(width=32, depth=1, num_heads=2, cond_dim=8))
    x0, cond = torch.randn(6, 16, 1, 4, 4), torch.randn(6, 3, 8)
    sigmas = sample_sigmas(6, torch.Generator().manual_seed(1), x0.device)

    def run(weighting):
        return flow_matching_loss(head, x0, cond, generator=torch.Generator().manual_seed(2), sigmas=sigmas,
                                  weighting=weighting)

    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(x0.shape, generator=gen)
    s = sigmas.view(6, 1, 1, 1, 1)
    v = head((1 - s) * x0 + s * noise, sigmas * 1000, cond)
    assert torch.equal(run("none"), F.mse_loss(v, noise - x0))
    per_row = (v - (noise - x0)).pow(2).flatten(1).mean(1)
    snr = ((1 - sigmas) / sigmas) ** 2
    raw = torch.minimum(snr, torch.tensor(5.0)) * sigmas ** 2                  # Min-SNR-5 moved to the velocity loss
    weights = loss_weights(sigmas, "min-snr")
    torch.testing.assert_close(weights / weights.sum(), raw / raw.sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(run("min-snr"), (weights * per_row).mean(), rtol=1e-6, atol=0)
    draws = sample_sigmas(2_000_000, torch.Generator().manual_seed(3), x0.device)
    assert abs(float(loss_weights(draws, "min-snr").mean()) - 1.0) < 2e-3       # mean 1 under the training levels
    with pytest.raises(ValueError, match="unknown loss weighting 'snr'"):
        loss_weights(sigmas, "snr")


def test_min_snr_trains_differently_but_reports_the_plain_validation_loss(tmp_path, tiny_config, autoencoder_file):
    cfg = _media(tiny_config, autoencoder_file, tasks={"text_to_image": 1.0}, max_steps=2, eval_every=2)
    plain = Trainer(cfg, tmp_path / "plain", log=lambda s: None)
    weighted = Trainer(cfg.replace(flow_weighting="min-snr"), tmp_path / "weighted", log=lambda s: None)
    assert plain.evaluate()["eval/loss/text_to_image"] == weighted.evaluate()["eval/loss/text_to_image"]
    plain.train(), weighted.train()
    assert _train_records(tmp_path / "plain")[0]["loss"] != _train_records(tmp_path / "weighted")[0]["loss"]
