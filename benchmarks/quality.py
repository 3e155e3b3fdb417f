"""The quality table of a model on the world's test and held-out splits (the README's published figures).

    python benchmarks/quality.py                         # the built-in model, full table (~15 min on 2 CPU cores)
    python benchmarks/quality.py --model runs/mine/pipeline --images 64 --videos 32 --steps 28
    python benchmarks/quality.py --candidates 1,2,4,8 --tasks text_to_image,text_to_video   # best of K drafts

Writes `benchmarks/results/quality_<name>.json` (every row, every failure, the settings) and prints the markdown
tables that `docs/quality.md` shows. See `multimodal.eval.quality` for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from multimodal.eval.quality import TASKS, QualitySettings, format_quality, headline, quality_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="saved pipeline folder or built-in name (default: shapes)")
    parser.add_argument("--images", type=int, default=QualitySettings.images, help="image prompts / captions per split")
    parser.add_argument("--videos", type=int, default=QualitySettings.videos, help="video prompts / captions per split")
    parser.add_argument("--steps", type=int, default=QualitySettings.steps)
    parser.add_argument("--guidance", type=float, default=QualitySettings.guidance)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", default="1", help="comma-separated K: rows for the best of K drafts per "
                        "prompt, and the oracle's (multimodal.eval.quality)")
    parser.add_argument("--splits", default=",".join(QualitySettings.splits), help="comma-separated world splits")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks")
    parser.add_argument("--no-autoencoder", action="store_true", help="skip the autoencoder PSNR rows")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/quality_<model>.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = QualitySettings(images=args.images, videos=args.videos, steps=args.steps, guidance=args.guidance,
                               seed=args.seed, candidates=tuple(int(k) for k in args.candidates.split(",")),
                               splits=tuple(args.splits.split(",")), tasks=tuple(args.tasks.split(",")),
                               **(dict(autoencoder_images=0, autoencoder_videos=0) if args.no_autoencoder else {}))
    start = time.perf_counter()
    report = quality_report(args.model, settings, device=args.device, log=lambda m: print(m, flush=True))
    report["model"] = args.model
    report["machine"] = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
                         or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    report["total_seconds"] = time.perf_counter() - start
    report["headline"] = headline(report)
    out = Path(args.out or Path(__file__).parent / "results" / f"quality_{Path(args.model).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_quality(report))
    print(json.dumps(report["headline"], indent=2))
    print(f"wrote {out} ({report['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
