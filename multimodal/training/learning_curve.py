"""The learning curve: what the model can do, per task, against the training time spent.

With `TrainConfig.score_samples` set, every evaluation of a media run scores fixed validation items with the world's
scorer (`scoring`), and its line of `metrics.jsonl` carries the training time so far (`train_minutes`, evaluation
excluded; see `metrics`). `plot_learning_curve` draws those scores into `<out>/learning_curve.png`, next to
`metrics.png`: one panel per score family, one line per task, x = training minutes, y from 0 to 1:

    generation accuracy      eval/accuracy/<task>   (text_to_image, text_to_video: every clause in the pixels)
    caption exact match      eval/exact/<task>      (image_to_text, video_to_text)
    caption slot F1          eval/slot_f1/<task>

The x axis is wall-clock minutes inside updates, so two runs on the same machine compare by what they learned per
minute of training, however often they evaluated; `cpu_minutes` (process CPU time) is in the same records.

An ablation compares runs: `comparison_panels` / `plot_comparison` draw one panel per eval metric and one line per
run (`benchmarks/ablation.py` prints the table and writes the PNG and JSON):

    runs = {"velocity": read_metrics("runs/a/metrics.jsonl"), "x0": read_metrics("runs/b/metrics.jsonl")}
    plot_comparison(runs, ["accuracy/text_to_image", "loss/text_to_image"], "ablation.png")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .metrics import draw_panels

FAMILIES = (("generation accuracy", "accuracy"), ("caption exact match", "exact"), ("caption slot F1", "slot_f1"))
TIME_KEY = "train_minutes"

Panel = tuple[str, list[tuple[str, list[tuple[float, float]]]]]


def _points(records: list[dict[str, Any]], key: str, x_key: str) -> list[tuple[float, float]]:
    """(x, value) of every eval record that logged `key` and `x_key`, both finite."""
    pts = [(float(r[x_key]), float(r[key])) for r in records if r.get("kind") == "eval" and key in r and x_key in r]
    return [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]


def learning_curve_panels(records: list[dict[str, Any]], x_key: str = TIME_KEY) -> list[Panel]:
    """(title, [(task, [(minutes, score)])]) per score family present in the eval records that carry `x_key`;
    empty when no evaluation was scored."""
    evals = [r for r in records if r.get("kind") == "eval" and x_key in r]
    panels: list[Panel] = []
    for title, family in FAMILIES:
        prefix = f"eval/{family}/"
        tasks = sorted({k[len(prefix):] for r in evals for k in r if k.startswith(prefix)})
        lines = []
        for task in tasks:
            pts = _points(evals, prefix + task, x_key)
            if pts:
                lines.append((task, pts))
        if lines:
            panels.append((title, lines))
    return panels


def plot_learning_curve(records: list[dict[str, Any]], path: str | Path, width: int = 900,
                        panel_height: int = 240) -> Path:
    """Draw the scores of the eval records against training minutes into a PNG at `path` (atomically).

    Raises ValueError when no eval record carries a score and the training time."""
    panels = learning_curve_panels(records)
    if not panels:
        raise ValueError(f"no scored eval records with {TIME_KEY!r} to plot (set score_samples)")
    return draw_panels(panels, path, width, panel_height, x_name="training min", y_range=(0.0, 1.0),
                       markers=True)


def comparison_panels(runs: dict[str, list[dict[str, Any]]], metrics: list[str],
                      x_key: str = TIME_KEY) -> list[Panel]:
    """(metric, [(run, [(minutes, value)])]) for each of `metrics` (eval keys without the "eval/" prefix, e.g.
    "accuracy/text_to_image"), one line per run that logged it; a metric no run logged raises ValueError naming it."""
    panels: list[Panel] = []
    for metric in metrics:
        key = f"eval/{metric}"
        lines = []
        for name, records in runs.items():
            pts = _points(records, key, x_key)
            if pts:
                lines.append((name, pts))
        if not lines:
            raise ValueError(f"no run logged eval/{metric} with {x_key!r} (runs: {', '.join(runs)})")
        panels.append((metric, lines))
    return panels


def plot_comparison(runs: dict[str, list[dict[str, Any]]], metrics: list[str], path: str | Path,
                    width: int = 900, panel_height: int = 200, x_key: str = TIME_KEY) -> Path:
    """Draw `comparison_panels` into a PNG at `path` (atomically): x = training minutes (or `x_key`); scores
    (accuracy, exact, slot_f1, ...) on 0..1, losses on their own range."""
    panels = comparison_panels(runs, metrics, x_key)
    ranges = [None if title.startswith("loss/") or any(not 0.0 <= y <= 1.0 for _, pts in lines for _, y in pts)
              else (0.0, 1.0) for title, lines in panels]
    return draw_panels(panels, path, width, panel_height, x_name="training min" if x_key == TIME_KEY else x_key,
                       y_range=ranges, markers=True)


__all__ = ["learning_curve_panels", "plot_learning_curve", "comparison_panels", "plot_comparison", "FAMILIES"]
