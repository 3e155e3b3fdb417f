"""How often the world's scorer accepts the world's own samples, as rendered and after an H.264 round trip, as JSON.

    python benchmarks/scorer_accuracy.py [--images 1000] [--videos 200] [--splits train test held-out]

For each split, the first `--images` images and `--videos` videos (`sample_image(split_seed(split, i))`, ...) are
scored against their own captions twice: as rendered, and after being written as H.264 yuv420p mp4 (CRF 18, the
images as the frames of one clip) and read back with PyAV. Every clause must hold for a pass. Writes
`benchmarks/results/scorer_accuracy.json` with the pass rates and every failure's caption and details.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from multimodal.data.files import mp4_round_trip
from multimodal.data.render import render_sample
from multimodal.data.world import sample_image, sample_video, split_seed
from multimodal.eval.scorer import score_frames


def score(samples: list, frames: list[np.ndarray]) -> dict:
    failures = []
    for s, f in zip(samples, frames):
        result = score_frames(s.caption, f)
        if not result.passed:
            failures.append({"seed": s.seed, "caption": s.caption, "details": result.details})
    return {"samples": len(samples), "accuracy": 1 - len(failures) / max(len(samples), 1), "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--splits", nargs="+", default=["train", "test", "held-out"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scorer_accuracy.json"))
    args = parser.parse_args()
    report: dict = {"images": args.images, "videos": args.videos, "splits": {}}
    start = time.perf_counter()
    for split in args.splits:
        images = [sample_image(split_seed(split, i)) for i in range(args.images)]
        rendered = np.concatenate([render_sample(s) for s in images])                  # (N, 64, 64, 3)
        coded = mp4_round_trip(rendered) if len(rendered) else rendered
        videos = [sample_video(split_seed(split, i)) for i in range(args.videos)]
        clips = [render_sample(s) for s in videos]
        rows = {"images": score(images, [f[None] for f in rendered]),
                "images_mp4": score(images, [f[None] for f in coded]),
                "videos": score(videos, clips),
                "videos_mp4": score(videos, [mp4_round_trip(c) for c in clips])}
        report["splits"][split] = rows
        print(f"{split:<9}" + "".join(f"  {k} {100 * v['accuracy']:.1f}%" for k, v in rows.items()), flush=True)
    report["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
