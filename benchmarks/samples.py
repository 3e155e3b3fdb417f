"""The README's pictures, regenerated: the five main-job samples and the best-of-K picture, with the scorer's verdict.

    python benchmarks/samples.py --threads 2                 # docs/images/*.png, *.gif and best-of-k-*.png

Every sample is what the CLI draws for its prompt with its defaults (seed 0, 28 steps, guidance 3, the best of
`DEFAULT_CANDIDATES` drafts: 4 per image, 1 per video; `--candidates 1` gives the plain pipeline). The best-of-K
picture shows every draft of one prompt in draw order with the model's log-likelihood of the prompt (summed over its
tokens and `<eos>`), the world scorer's verdict, and a frame around the draft the model chose. Prints one line per
picture (JSON with `--json`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from multimodal import TextToImagePipeline, TextToVideoPipeline, export_to_video
from multimodal.eval.scorer import score_frames
from multimodal.pipelines.rerank import DEFAULT_CANDIDATES

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ["a large red circle", "two small green triangles", "a blue square to the left of a yellow circle",
          "a small white digit 7"]
VIDEO = "a small blue square moves left"
SCALE = 2                       # 64 px drafts drawn at 128 px, nearest neighbour


def slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")


def verdict(score) -> str:
    return "pass" if score.passed else "fails " + ", ".join(score.failed)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def best_of_k_picture(pipe, prompt: str, k: int, seed: int, path: Path) -> list[dict]:
    """Every draft of `prompt` in draw order, labelled with its score and verdict; the chosen one framed."""
    out = pipe(prompt, num_candidates=k, return_all_candidates=True, generator=torch.Generator().manual_seed(seed),
               output_type="np")
    draws = out.candidate_index[0].tolist()                       # draw of each returned draft, best first
    scores = out.scores[0].tolist()
    rows = []
    for rank, (draw, image) in enumerate(zip(draws, out.images)):
        pixels = to_uint8(np.asarray(image))
        rows.append({"draw": draw, "rank": rank, "log_likelihood": scores[rank],
                     "verdict": verdict(score_frames(prompt, pixels[None])), "pixels": pixels})
    rows.sort(key=lambda r: r["draw"])
    size, pad, label = 64 * SCALE, 6, 30
    sheet = Image.new("RGB", (k * (size + pad) + pad, size + 2 * pad + label), "white")
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(rows):
        x = pad + i * (size + pad)
        if r["rank"] == 0:
            draw.rectangle([x - 4, pad - 4, x + size + 3, pad + size + 3], outline=(255, 160, 0), width=4)
        sheet.paste(Image.fromarray(r["pixels"]).resize((size, size), Image.NEAREST), (x, pad))
        draw.text((x, pad + size + 5), f"{r['log_likelihood']:.3f}", fill="black")
        draw.text((x, pad + size + 17), "pass" if r["verdict"] == "pass" else "fail", fill="black")
    sheet.save(path)
    return [{k_: v for k_, v in r.items() if k_ != "pixels"} for r in rows]


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--candidates", type=int, default=None,
                        help="drafts per sample (default: the CLI's, DEFAULT_CANDIDATES per kind)")
    parser.add_argument("--best-of-k", type=int, default=8, help="drafts in the best-of-K picture")
    parser.add_argument("--best-of-k-prompt", default=IMAGES[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = TextToImagePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    video_pipe = TextToVideoPipeline.from_pipe(pipe)
    video_pipe.set_progress_bar_config(disable=True)
    image_k = args.candidates or DEFAULT_CANDIDATES["image"]
    video_k = args.candidates or DEFAULT_CANDIDATES["video"]
    report = {"candidates": {"image": image_k, "video": video_k}, "seed": args.seed, "samples": []}
    for prompt in IMAGES:
        image = pipe(prompt, num_candidates=image_k, generator=torch.Generator().manual_seed(args.seed),
                     output_type="np").images[0]
        pixels = to_uint8(np.asarray(image))
        path = out / f"{slug(prompt)}.png"
        Image.fromarray(pixels).save(path)
        report["samples"].append({"prompt": prompt, "file": relative(path),
                                  "verdict": verdict(score_frames(prompt, pixels[None]))})
    frames = video_pipe(VIDEO, num_candidates=video_k, generator=torch.Generator().manual_seed(args.seed),
                        output_type="np").frames[0]
    path = out / "blue-square-moves-left.gif"
    export_to_video(frames, path, fps=pipe.model.config.fps)
    report["samples"].append({"prompt": VIDEO, "file": relative(path),
                              "verdict": verdict(score_frames(VIDEO, to_uint8(np.asarray(frames))))})
    path = out / f"best-of-{args.best_of_k}-{slug(args.best_of_k_prompt)}.png"
    report["best_of_k"] = {"prompt": args.best_of_k_prompt, "file": relative(path),
                           "drafts": best_of_k_picture(pipe, args.best_of_k_prompt, args.best_of_k, args.seed, path)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for s in report["samples"]:
            print(f"{s['prompt']!r:50} {s['verdict']:40} {s['file']}")
        print(f"best of {args.best_of_k}, {args.best_of_k_prompt!r} -> {relative(path)}")
        for d in report["best_of_k"]["drafts"]:
            print(f"  draw {d['draw']}  rank {d['rank']}  log-likelihood {d['log_likelihood']:8.4f}  "
                  f"{d['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
