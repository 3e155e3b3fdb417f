"""TrainConfig validation, presets, JSON round trip, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from multimodal.training.config import TRAIN_PRESETS, TrainConfig, train_preset
from multimodal.training.curriculum import Curriculum, parse_curriculum
from multimodal.training.schedule import WarmupCosine


def test_config_round_trip(tmp_path):
    cfg = TrainConfig(tasks={"text": 2.0}, betas=(0.8, 0.9), model={"hidden_size": 64})
    cfg.save(tmp_path / "c.json")
    back = TrainConfig.load(tmp_path / "c.json")
    assert back == cfg and back.betas == (0.8, 0.9)


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys: \['learning_rate', 'warmup'\]"):
        TrainConfig.from_dict({"learning_rate": 1e-3, "warmup": 3, "lr": 1e-3})


@pytest.mark.parametrize("field,value,message", [
    ("lr", 0.0, "lr must be > 0, got 0.0"),
    ("optimizer", "sgd", "optimizer must be one of"),
    ("precision", "fp8", "precision must be one of"),
    ("warmup_steps", 50, r"warmup_steps \(50\) must be <= max_steps \(10\)"),
    ("tasks", {"text": -1.0}, "task weights must be >= 0"),
    ("grad_accum", 0, "grad_accum must be > 0, got 0"),
    ("betas", (0.9, 1.5), "betas must be two numbers"),
    ("visual_stem_init", 64, "visual_stem_init must be a path"),
    ("freeze", "visual_stem", "freeze must be a list of parameter-name prefixes"),
    ("lr_scale", {"visual_stem.out": 0}, "lr_scale must map parameter-name prefixes to multipliers > 0"),
])
def test_bad_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"max_steps": 10, "warmup_steps": 1, field: value})


def test_presets():
    backbones = {"debug": "debug", "tiny": "tiny", "mix-debug": "debug", "mix-tiny": "tiny", "shapes-demo": "tiny",
                 "shapes-demo-2": "tiny", "shapes-demo-3": "tiny", "shapes-demo-4": "tiny",
                 "shapes-demo-5": "tiny", "shapes-demo-6": "tiny", "shapes-demo-7": "tiny",
                 "shapes-demo-8": "tiny", "shapes-demo-9": "tiny", "shapes-demo-10": "tiny",
                 "shapes-demo-11": "tiny", "shapes-demo-12": "tiny", "shapes-gpu": "tiny"}
    assert set(TRAIN_PRESETS) == set(backbones)
    for name in TRAIN_PRESETS:
        cfg = train_preset(name)
        assert cfg.preset == backbones[name]
        assert (set(cfg.tasks) == {"text"}) == (name in ("debug", "tiny"))     # the others train every task
    stage3 = train_preset("shapes-demo-3")           # the built-in model's third stage: its learning curve is scored
    assert stage3.init_from == "shapes" and stage3.precision == "auto"
    assert (stage3.score_samples_of("image"), stage3.score_samples_of("video")) == (100, 50)
    stage4 = train_preset("shapes-demo-4")           # the same recipe, a new data order
    assert stage4.replace(seed=3, max_steps=1200, eval_every=300, save_every=300) == stage3
    assert train_preset("shapes-demo-5").replace(seed=6) == stage4
    stage6 = train_preset("shapes-demo-6")           # a caption-heavy mix from stage 5's weights
    assert stage6.init_from == "shapes" and stage6.tasks["image_to_text"] == stage6.tasks["video_to_text"] == 0.35
    assert (stage6.score_samples_of("image"), stage6.score_samples_of("video"), stage6.max_steps) == (200, 100, 1200)
    stage7 = train_preset("shapes-demo-7")           # stage 6's recipe with a pretrained stem grown on its weights
    assert stage7.replace(seed=9, visual_stem=None, visual_stem_init="", freeze=[], lr_scale={}) == stage6
    assert stage7.freeze == ["visual_stem.conv1", "visual_stem.conv2"]
    assert stage7.visual_stem == 64 and stage7.visual_stem_init.endswith("visual_stem.safetensors")
    stage8 = train_preset("shapes-demo-8")           # stage 7's recipe from its weights (the stem already in them)
    assert stage8.replace(seed=10, visual_stem=64, visual_stem_init=stage7.visual_stem_init,
                          tasks=stage7.tasks) == stage7
    assert stage8.tasks["text_to_image"] == 0.25 and stage8.freeze == stage7.freeze
    stage9 = train_preset("shapes-demo-9")           # the flow heads alone on stage 8's backbone
    assert set(stage9.tasks) == {"text_to_image", "text_to_video"} and stage9.lr_scale == {}
    assert "backbone" in stage9.freeze and not any(p.endswith("_head") for p in stage9.freeze)
    stage10 = train_preset("shapes-demo-10")         # stage 8's recipe from stage 9's shipped weights, captions first
    assert stage10.replace(init_from=stage8.init_from, seed=11, tasks=stage8.tasks, max_steps=1200, eval_every=300,
                           save_every=300) == stage8
    assert stage10.init_from == "shapes" and abs(sum(stage10.tasks.values()) - 1) < 1e-9
    assert stage10.tasks["image_to_text"] > stage8.tasks["image_to_text"]
    stage11 = train_preset("shapes-demo-11")         # stage 10's recipe with image relations oversampled
    assert stage11.replace(seed=17, tasks=stage10.tasks, curriculum=[]) == stage10
    assert stage11.tasks["image_to_text"] > stage10.tasks["image_to_text"] and abs(sum(stage11.tasks.values()) - 1) < 1e-9
    curriculum = Curriculum(parse_curriculum(stage11.curriculum, list(stage11.tasks)))
    kinds = [curriculum.stages[curriculum.stage_at(step)].image for step in range(stage11.max_steps)]
    assert kinds.count(("relation",)) == stage11.max_steps // 2          # half the updates on relation images alone
    for step in range(stage11.eval_every, stage11.max_steps + 1, stage11.eval_every):
        assert kinds[step - 1] == ("single", "count", "relation")       # every validation score follows every kind
    assert all(s.video == ("still", "moving") and s.tasks is None for s in curriculum.stages)
    stage12 = train_preset("shapes-demo-12")         # stage 11's recipe, its relation blocks for the captions alone
    assert stage12.replace(seed=18, tasks=stage11.tasks, max_steps=2000, eval_every=500, save_every=250,
                           curriculum=stage11.curriculum) == stage11
    assert stage12.tasks["text_to_image"] > stage11.tasks["text_to_image"] and abs(sum(stage12.tasks.values()) - 1) < 1e-9
    curriculum = Curriculum(parse_curriculum(stage12.curriculum, list(stage12.tasks)))
    for step in range(stage12.max_steps):
        stage = curriculum.stages[curriculum.stage_at(step)]
        assert stage.allows("image", "text_to_image") == ("single", "count", "relation")   # pictures: every kind
    caption_kinds = [curriculum.stages[curriculum.stage_at(step)].allows("image", "image_to_text")
                     for step in range(stage12.max_steps)]
    assert caption_kinds.count(("relation",)) == stage12.max_steps // 2
    for step in range(stage12.eval_every, stage12.max_steps + 1, stage12.eval_every):
        assert caption_kinds[step - 1] == ("single", "count", "relation")
    with pytest.raises(ValueError, match="resident_data needs latent_cache"):
        TrainConfig(tasks={"text_to_image": 1.0}, resident_data=True)
    with pytest.raises(ValueError, match=r"unknown tasks \['image_to_speech'\]"):
        TrainConfig(tasks={"image_to_speech": 1.0})
    with pytest.raises(ValueError, match="unknown training preset 'huge'"):
        train_preset("huge")


def test_score_samples_per_kind():
    cfg = TrainConfig(tasks={"text_to_image": 1.0}, score_samples={"image": 100, "video": 50})
    assert (cfg.score_samples_of("image"), cfg.score_samples_of("video")) == (100, 50)
    assert TrainConfig(score_samples={"image": 8}).score_samples_of("video") == 0
    assert TrainConfig(score_samples=4).score_samples_of("video") == 4
    for bad in ({"audio": 3}, {"image": -1}, -2, {"video": 1.5}):
        with pytest.raises(ValueError, match="score_samples must be an integer >= 0"):
            TrainConfig(score_samples=bad)


def test_schedule_warmup_peak_cosine_floor():
    s = WarmupCosine(peak_lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [s.lr_at(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.lr_at(4) == pytest.approx(1.0)
    assert s.lr_at(9) == pytest.approx(0.1 + 0.9 * 0.5)                  # half way through the cosine
    assert s.lr_at(14) == pytest.approx(0.1) and s.lr_at(100) == pytest.approx(0.1)
    lrs = [s.lr_at(i) for i in range(4, 15)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))                    # monotone decay


def test_schedule_sets_groups_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p]}, {"params": [], "lr_scale": 0.5}], lr=0.0)
    s = WarmupCosine(peak_lr=2.0, warmup_steps=0, total_steps=10)
    s.advance()
    s.advance()
    s.apply(opt)
    expected = 2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    assert opt.param_groups[1]["lr"] == pytest.approx(expected * 0.5)
    fresh = WarmupCosine(peak_lr=2.0, warmup_steps=0, total_steps=10)
    fresh.load_state_dict(s.state_dict())
    assert fresh.step == 2
    with pytest.raises(ValueError, match="total_steps differs"):
        WarmupCosine(peak_lr=2.0, warmup_steps=0, total_steps=20).load_state_dict(s.state_dict())
