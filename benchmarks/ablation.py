"""An ablation's table and curves: runs trained at equal budget, their validation scores side by side.

    python benchmarks/ablation.py velocity=runs/abl-velocity x0=runs/abl-x0 \
        --metrics accuracy/text_to_image,loss/text_to_image --plot docs/images/ablation-prediction.png \
        --out benchmarks/results/ablation_prediction.json

Each run is `name=folder` of a `multimodal train` run with `score_samples` set (its `metrics.jsonl` eval lines).
Prints a markdown table (one row per evaluation of each run: update, training and CPU minutes, every metric) and
the last evaluation of each run; writes the curves (x = training minutes) and a JSON with every eval point and each
run's `train_config.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from multimodal.training.learning_curve import plot_comparison
from multimodal.training.metrics import read_metrics


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if metric.startswith(("loss/", "lm/", "mtp/")) else f"{value:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="name=run folder, one per arm")
    parser.add_argument("--metrics", default="accuracy/text_to_image,loss/text_to_image",
                        help="comma-separated eval keys without 'eval/'")
    parser.add_argument("--plot", default=None, help="PNG of the curves")
    parser.add_argument("--out", default=None, help="JSON of every eval point")
    args = parser.parse_args()
    metrics = args.metrics.split(",")
    runs, configs = {}, {}
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        if not sep or not name:
            parser.error(f"run {spec!r}: expected name=folder")
        path = Path(folder) / "metrics.jsonl"
        if not path.is_file():
            parser.error(f"run {name!r}: no {path}")
        runs[name] = [r for r in read_metrics(path) if r.get("kind") == "eval" and "train_minutes" in r]
        if not runs[name]:
            parser.error(f"run {name!r}: {path} holds no scored eval lines (train with score_samples)")
        cfg = Path(folder) / "train_config.json"
        configs[name] = json.loads(cfg.read_text()) if cfg.is_file() else None
    header = ["run", "update", "train min", "CPU min", *metrics]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, records in runs.items():
        for r in records:
            cells = [name, f"{r['step']:,}", f"{r['train_minutes']:.1f}", f"{r.get('cpu_minutes', float('nan')):.1f}",
                     *(_fmt(m, r.get(f"eval/{m}")) for m in metrics)]
            print("| " + " | ".join(cells) + " |")
    print("\nlast evaluation of each run:")
    for name, records in runs.items():
        last = records[-1]
        print(f"  {name}: update {last['step']}, " + ", ".join(f"{m} {_fmt(m, last.get(f'eval/{m}'))}"
                                                             for m in metrics))
    if args.plot:
        print(f"wrote {plot_comparison(runs, metrics, args.plot)}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"metrics": metrics, "runs": {n: {"folder": s.partition("=")[2], "evals": runs[n],
                                                                    "train_config": configs[n]}
                                                                for n, s in zip(runs, args.runs)}}, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
