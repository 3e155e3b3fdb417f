"""Run metrics: an append-only JSONL log and a PNG plot of its curves.

Each line of `<out>/metrics.jsonl` is one JSON object with at least `step` and `kind` (`"train"` or `"eval"`).
Train lines carry `loss`, `lr`, `grad_norm`, `tokens_per_s`, `steps_per_s`, `elapsed_s` and one `loss/<task>`
per task seen in the step; eval lines carry `eval/<name>` values from the evaluators, and the training time spent so far
(`train_minutes`: wall-clock minutes inside updates, evaluation and checkpoints excluded; `cpu_minutes`: the process's
CPU time in them, all threads; both continue across resumes), the x axis of `learning_curve`.

On resume, `MetricsLog.truncate_after(step)` drops lines logged after the checkpoint the run continues from (a
killed run may have logged a few steps it never saved), so the log of a resumed run reads like an uninterrupted
one. `plot_metrics` draws the curves with Pillow alone (no plotting library): one panel per series group, shared
step axis, min/max labels on the y axis; `draw_panels` is the drawing both plots share.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (255, 187, 120),
           (152, 223, 138), (197, 176, 213)]


class MetricsLog:
    """Appends JSON lines to a file, flushing each one so a killed run keeps everything it logged."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if "step" not in record or "kind" not in record:
            raise ValueError(f"a metrics record needs 'step' and 'kind', got keys {sorted(record)}")
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, allow_nan=True) + "\n")
            handle.flush()

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> int:
        """Drop records with `step` > `step` (atomically); returns how many were dropped."""
        if not self.path.exists():
            return 0
        records = read_metrics(self.path)
        keep = [r for r in records if r["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)
        return len(records) - len(keep)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL log; a last line cut short by a kill is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:       # torn final write
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}")
    return out


# ------------------------------------------------------------------------------------------------------------ plot
def _series(records: Iterable[dict[str, Any]], kind: str, key: str) -> list[tuple[float, float]]:
    pts = [(float(r["step"]), float(r[key])) for r in records if r.get("kind") == kind and key in r]
    return [(x, y) for x, y in pts if math.isfinite(y)]


def _panels(records: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, list[tuple[float, float]]]]]]:
    """(title, [(label, points)]) per panel: losses (train, per task, eval), learning rate, gradient norm."""
    train_keys = sorted({k for r in records if r.get("kind") == "train" for k in r if k.startswith("loss/")})
    eval_keys = sorted({k for r in records if r.get("kind") == "eval" for k in r if k.startswith("eval/")})
    loss = [("train loss", _series(records, "train", "loss"))]
    if len(train_keys) > 1:                                  # one task: its curve is the train loss itself
        loss += [(k, _series(records, "train", k)) for k in train_keys]
    loss += [(k, _series(records, "eval", k)) for k in eval_keys if "loss" in k]
    panels = [("loss", loss), ("learning rate", [("lr", _series(records, "train", "lr"))]),
              ("gradient norm (before clipping)", [("grad_norm", _series(records, "train", "grad_norm"))])]
    return [(title, [(n, p) for n, p in lines if p]) for title, lines in panels if any(p for _, p in lines)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _draw_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
                lines: list[tuple[str, list[tuple[float, float]]]], font: ImageFont.ImageFont, x_name: str = "step",
                y_range: tuple[float, float] | None = None, markers: bool = False) -> None:
    """One panel: `lines` of (label, [(x, y)]) in a box; y spans the data, or at least `y_range`; `markers` marks
    every point (always done for labels with "eval": sparse points)."""
    left, top, right, bottom = box
    # title, then the legend wrapped over as many 12-px rows as it needs
    draw.text((left + 4, top + 2), title, fill=(0, 0, 0), font=font)
    legend, x, row = [], left + 8 + 7 * len(title) + 20, 0
    for i, (label, _) in enumerate(lines):
        width = 7 * len(label) + 14
        if x + width > right - 10 and x > left + 60:
            x, row = left + 60, row + 1
        legend.append((x, top + 2 + 12 * row, label, COLOURS[i % len(COLOURS)]))
        x += width
    x0, y0, x1, y1 = left + 60, top + 18 + 12 * row, right - 10, bottom - 22     # plot area inside the panel
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    for lx, ly, label, colour in legend:
        draw.text((lx, ly), label, fill=colour, font=font)
    xs = [x for _, pts in lines for x, _ in pts]
    ys = [y for _, pts in lines for _, y in pts]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    if y_range is not None:
        ymin, ymax = min(ymin, y_range[0]), max(ymax, y_range[1])
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymin, ymax = ymin - 0.5 * abs(ymin or 1), ymax + 0.5 * abs(ymax or 1)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

    for frac in (0.25, 0.5, 0.75):                                          # light grid
        gy = y0 + frac * (y1 - y0)
        draw.line((x0, gy, x1, gy), fill=(225, 225, 225))
    draw.text((left + 2, y0 - 4), _fmt(ymax), fill=(0, 0, 0), font=font)
    draw.text((left + 2, y1 - 8), _fmt(ymin), fill=(0, 0, 0), font=font)
    whole = x_name == "step"
    draw.text((x0, y1 + 4), f"{x_name} {int(xmin) if whole else _fmt(xmin)}", fill=(0, 0, 0), font=font)
    last = f"{int(xmax)}" if whole else _fmt(xmax)
    draw.text((x1 - 6 * len(last), y1 + 4), last, fill=(0, 0, 0), font=font)
    for i, (label, pts) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        px = [to_px(x, y) for x, y in pts]
        if len(px) == 1:
            cx, cy = px[0]
            draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=colour)
        else:
            draw.line(px, fill=colour, width=2)
        if markers or "eval" in label:                                      # eval points are sparse: mark them
            for cx, cy in px:
                draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), outline=colour)


def plot_metrics(records: list[dict[str, Any]], path: str | Path, width: int = 900, panel_height: int = 240) -> Path:
    """Draw the run's curves into a PNG at `path` (atomically); returns the path.

    Raises ValueError when there is nothing to plot (no train records with a loss)."""
    panels = _panels(records)
    if not panels:
        raise ValueError("no train records with a loss to plot")
    return draw_panels(panels, path, width, panel_height)


def draw_panels(panels: list[tuple[str, list[tuple[str, list[tuple[float, float]]]]]], path: str | Path,
                width: int = 900, panel_height: int = 240, x_name: str = "step",
                y_range: "tuple[float, float] | list[tuple[float, float] | None] | None" = None,
                markers: bool = False) -> Path:
    """Draw (title, [(label, points)]) panels one above the other into a PNG at `path` (atomically); `y_range` is
    one range for every panel or a list with one (or None: the data's) per panel."""
    ranges = y_range if isinstance(y_range, list) else [y_range] * len(panels)
    if len(ranges) != len(panels):
        raise ValueError(f"y_range lists {len(ranges)} ranges for {len(panels)} panels")
    image = Image.new("RGB", (width, panel_height * len(panels)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for i, (title, lines) in enumerate(panels):
        _draw_panel(draw, (0, i * panel_height, width, (i + 1) * panel_height), title, lines, font, x_name,
                    ranges[i], markers)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
