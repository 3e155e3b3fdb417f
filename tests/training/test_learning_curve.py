"""The learning curve: score panels from eval records (per family, per task, against training minutes), and the PNG."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from multimodal.training.learning_curve import learning_curve_panels, plot_learning_curve


def _records():
    return [
        {"step": 1, "kind": "train", "loss": 3.0, "lr": 1e-3, "grad_norm": 1.0},
        {"step": 2, "kind": "eval", "eval/loss/text": 2.0},                      # an old line: no training time
        {"step": 4, "kind": "eval", "train_minutes": 0.5, "cpu_minutes": 0.9, "eval/loss/text": 1.9,
         "eval/accuracy/text_to_image": 0.1, "eval/accuracy/text_to_video": 0.0,
         "eval/exact/image_to_text": 0.2, "eval/slot_f1/image_to_text": 0.6, "eval/bleu4/image_to_text": 0.3},
        {"step": 8, "kind": "eval", "train_minutes": 1.25, "cpu_minutes": 2.2, "eval/loss/text": 1.5,
         "eval/accuracy/text_to_image": 0.3, "eval/accuracy/text_to_video": math.nan,
         "eval/exact/image_to_text": 0.4, "eval/slot_f1/image_to_text": 0.8, "eval/exact/video_to_text": 0.1},
    ]


def test_panels_hold_each_task_against_training_minutes():
    panels = dict(learning_curve_panels(_records()))
    assert list(panels) == ["generation accuracy", "caption exact match", "caption slot F1"]
    assert panels["generation accuracy"] == [("text_to_image", [(0.5, 0.1), (1.25, 0.3)]),
                                             ("text_to_video", [(0.5, 0.0)])]          # the NaN point is dropped
    assert panels["caption exact match"] == [("image_to_text", [(0.5, 0.2), (1.25, 0.4)]),
                                             ("video_to_text", [(1.25, 0.1)])]
    assert panels["caption slot F1"] == [("image_to_text", [(0.5, 0.6), (1.25, 0.8)])]
    cpu = dict(learning_curve_panels(_records(), x_key="cpu_minutes"))
    assert cpu["generation accuracy"][0] == ("text_to_image", [(0.9, 0.1), (2.2, 0.3)])
    # losses only (no scorer ran), or scores without the training time: nothing to draw
    losses_only = [{k: v for k, v in r.items() if "/" not in k or k.startswith("eval/loss/")} for r in _records()]
    assert learning_curve_panels(losses_only) == []
    assert learning_curve_panels([{k: v for k, v in r.items() if k != "train_minutes"} for r in _records()]) == []


def test_plot_writes_one_panel_per_family(tmp_path):
    path = plot_learning_curve(_records(), tmp_path / "learning_curve.png", width=640, panel_height=200)
    assert path == tmp_path / "learning_curve.png" and not list(tmp_path.glob("*.tmp*"))
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (640, 3 * 200)
        # the panels hold drawn lines: some pixels in each are neither white nor black nor grid grey
        rgb = img.convert("RGB")
        for i in range(3):
            colours = {rgb.getpixel((x, y)) for x in range(70, 630, 3) for y in range(i * 200 + 30, i * 200 + 170, 3)}
            assert colours - {(255, 255, 255), (0, 0, 0), (225, 225, 225)}, i
    with pytest.raises(ValueError, match="no scored eval records"):
        plot_learning_curve(_records()[:2], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_comparison_has_one_panel_per_metric_and_one_line_per_run(tmp_path):
    from multimodal.training.learning_curve import comparison_panels, plot_comparison

    other = [{**r, "eval/accuracy/text_to_image": r["eval/accuracy/text_to_image"] + 0.1}
             for r in _records() if "eval/accuracy/text_to_image" in r]
    runs = {"a": _records(), "b": other, "text-only": _records()[:2]}
    panels = dict(comparison_panels(runs, ["accuracy/text_to_image", "loss/text"]))
    assert panels["accuracy/text_to_image"] == [("a", [(0.5, 0.1), (1.25, 0.3)]),
                                                ("b", [(0.5, pytest.approx(0.2)), (1.25, pytest.approx(0.4))])]
    assert panels["loss/text"] == [("a", [(0.5, 1.9), (1.25, 1.5)]), ("b", [(0.5, 1.9), (1.25, 1.5)])]
    with pytest.raises(ValueError, match="no run logged eval/exact/speech_to_text"):
        comparison_panels(runs, ["exact/speech_to_text"])
    path = plot_comparison(runs, ["accuracy/text_to_image", "loss/text"], tmp_path / "ablation.png", width=500,
                           panel_height=150)
    with Image.open(path) as img:
        assert img.size == (500, 300)
        rgb = img.convert("RGB")
        for i in range(2):
            colours = {rgb.getpixel((x, y)) for x in range(70, 490, 3) for y in range(i * 150 + 30, i * 150 + 120, 3)}
            assert colours - {(255, 255, 255), (0, 0, 0), (225, 225, 225)}, i
