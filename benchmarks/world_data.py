"""Throughput of the shapes-and-digits world: dataset samples/s and scorer samples/s, as JSON.

    python benchmarks/world_data.py [--samples 2048] [--workers 0]

Rendering happens on the fly in ``__getitem__``; the numbers say whether the world can feed training
on a small CPU without becoming the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import time

from torch.utils.data import DataLoader

from multimodal.data.datasets import collate_world, image_dataset, mixed_dataset, video_dataset
from multimodal.data.glyphs import glyph_images
from multimodal.data.render import render_sample
from multimodal.data.world import sample_image, sample_video, split_seed
from multimodal.eval.scorer import score_sample


def dataset_rate(ds, workers: int, batch_size: int = 64) -> float:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_world)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += sum(len(group["caption"]) for group in batch.values())
    return n / (time.perf_counter() - start)


def scorer_rate(make, n: int) -> float:
    samples = [make(split_seed("test", i)) for i in range(n)]
    frames = [render_sample(s) for s in samples]
    start = time.perf_counter()
    for s, f in zip(samples, frames):
        score_sample(s, f)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    glyph_images()  # load sklearn's digits once, outside the timings
    score_sample(sample_image(0), render_sample(sample_image(0)))  # load the digit classifier
    result = {
        "dataset_samples_per_s": {
            "image": dataset_rate(image_dataset("train", args.samples), args.workers),
            "video": dataset_rate(video_dataset("train", args.samples // 4), args.workers),
            "mixed": dataset_rate(mixed_dataset("train", args.samples // 2), args.workers),
        },
        "scorer_samples_per_s": {"image": scorer_rate(sample_image, 300), "video": scorer_rate(sample_video, 40)},
        "workers": args.workers,
    }
    print(json.dumps({k: ({kk: round(vv, 1) for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
