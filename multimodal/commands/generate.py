"""`multimodal generate-image`, `generate-video`, `generate-text`: the generation pipelines from the command line.

    multimodal generate-image "a red circle above a blue square" -o out.png --seed 0 --steps 28 --guidance 3
    multimodal generate-image "a large red circle" "two small green squares" -o out/      # out/0-a-large-red-circle.png ...
    multimodal generate-image --prompts prompts.txt -o "img/{i:03d}-{slug}.png"           # one prompt per line
    multimodal generate-video "a small blue square moves left" -o out.mp4 --num 2         # out-0.mp4, out-1.mp4
    multimodal generate-image "a large red circle" -o red.png --candidates 8               # the best of 8 drafts
    multimodal generate-text "a red" --max-new-tokens 16

`--model` takes a saved pipeline folder or a built-in model name (default: the built-in model `shapes`, shipped inside
the package). Several prompts run in one process, `--batch-size` prompts per pipeline call (batch.py has the output
names). The commands run each pipeline's logic without diffusers (pipelines/core.py), and import torch only once the
arguments are checked, so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .batch import BatchError, gather_prompts, output_paths


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --seed, --device: shared by every generating / captioning command."""
    p.add_argument("--model", default="shapes", help="saved pipeline folder or built-in model name (default: shapes)")
    p.add_argument("--seed", type=int, default=0, help="random seed (sample i uses seed + i)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def load_pipeline(cls, args):
    """The pipeline `cls` from --model on --device; a missing model or device is a one-line UserError."""
    import torch

    from multimodal.cli import UserError
    from multimodal.pipelines.core import ModelNotFoundError

    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UserError(f"bad --device {args.device!r}: {exc}") from None
    try:
        pipe = cls.from_pretrained(args.model, device=device)
    except ModelNotFoundError as exc:
        raise UserError(str(exc)) from None
    pipe.set_progress_bar_config(disable=args.no_progress)
    return pipe


def generators(args, n: int, start: int = 0) -> list:
    """CPU generators seeded seed + start, ..., seed + start + n - 1 (output i uses seed + i)."""
    import torch

    return [torch.Generator().manual_seed(args.seed + start + i) for i in range(n)]


def add_parser(sub) -> None:
    for name, help_ in (("generate-image", "generate images from text prompts"),
                        ("generate-video", "generate videos (mp4, webm, gif, ...) from text prompts")):
        what, ext = ("image", ".png") if name == "generate-image" else ("video", ".mp4")
        p = sub.add_parser(name, help=help_)
        p.add_argument("prompt", nargs="*", help="what to draw, e.g. 'a red circle above a blue square' (several: one "
                                                 f"{what} per prompt)")
        p.add_argument("--prompts", metavar="FILE", help="more prompts, one per line (UTF-8)")
        p.add_argument("-o", "--output", required=True,
                       help=f"output file (several outputs: -0, -1, ... suffixes), a folder (files <i>-<slug>{ext}), "
                            "or a pattern with {i} (output index) and {slug} (the prompt's words)")
        p.add_argument("--num", type=int, default=1, help=f"{what}s per prompt")
        p.add_argument("--batch-size", type=int, default=8, help="prompts per pipeline call (default 8)")
        p.add_argument("--steps", type=int, default=28, help="denoising steps")
        p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (<= 1: off)")
        p.add_argument("--height", type=int, default=None)
        p.add_argument("--width", type=int, default=None)
        p.add_argument("--candidates", type=int, default=None, metavar="K",
                       help="draw K drafts per output and keep the one the model reads the prompt back from best "
                            "(1: no ranking; default: 4 for images, 1 for videos, "
                            "multimodal.pipelines.rerank.DEFAULT_CANDIDATES)")
        if name == "generate-video":
            p.add_argument("--frames", type=int, default=None, help="frames, 1 + 4k (default: the model's)")
            p.add_argument("--fps", type=float, default=None, help="frames per second of the file")
        add_model_arguments(p)
        p.set_defaults(func=run_image if name == "generate-image" else run_video)
    p = sub.add_parser("generate-text", help="continue a text prompt")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--num", type=int, default=1, help="how many continuations (with --sample, each differs)")
    add_model_arguments(p)
    p.set_defaults(func=run_text)


def _check(args) -> None:
    from multimodal.cli import UserError

    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if getattr(args, "steps", 1) < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if getattr(args, "batch_size", 1) < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if hasattr(args, "candidates"):
        from multimodal.pipelines.rerank import DEFAULT_CANDIDATES, MAX_CANDIDATES

        if args.candidates is None:
            args.candidates = DEFAULT_CANDIDATES["video" if args.command == "generate-video" else "image"]
        if not 1 <= args.candidates <= MAX_CANDIDATES:
            raise UserError(f"--candidates must be in [1, {MAX_CANDIDATES}], got {args.candidates}")


def _check_extension(paths: list[Path], kind: str) -> None:
    """A file type we cannot write is an error before any model loads."""
    from multimodal.cli import UserError

    if kind == "image":
        from PIL import Image

        known = set(Image.registered_extensions())
    else:
        from multimodal.io.video_writer import VIDEO_CODECS

        known = {*VIDEO_CODECS, ".gif"}
    for path in paths:
        if path.suffix.lower() not in known:
            raise UserError(f"cannot write {kind} file {path}: unknown extension {path.suffix or '(none)'!r}")


def _plan(args, kind: str) -> tuple[list[str], list[Path]]:
    """Checked prompts and one output path per output (prompt-major), before any model is loaded."""
    from multimodal.cli import UserError

    _check(args)
    try:
        prompts = gather_prompts(args.prompt, args.prompts)
        paths = output_paths(args.output, prompts, args.num, ".png" if kind == "image" else ".mp4")
    except BatchError as exc:
        raise UserError(str(exc)) from None
    _check_extension(paths, kind)
    for folder in sorted({p.parent for p in paths}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
    return prompts, paths


def _batches(prompts: list[str], batch_size: int):
    """(index of the first prompt, prompts) per pipeline call."""
    for lo in range(0, len(prompts), batch_size):
        yield lo, prompts[lo:lo + batch_size]


def run_image(args) -> int:
    prompts, paths = _plan(args, "image")                             # every check before torch loads
    from multimodal.io import write_image
    from multimodal.pipelines.text_to_image import TextToImage

    pipe = load_pipeline(TextToImage, args)
    for lo, chunk in _batches(prompts, args.batch_size):
        first = lo * args.num                                         # output index of the chunk's first image
        images = pipe(chunk, num_images_per_prompt=args.num, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, height=args.height, width=args.width,
                      num_candidates=args.candidates, generator=generators(args, len(chunk) * args.num, first),
                      output_type="pil").images
        for i, image in enumerate(images, first):
            print(write_image(paths[i], image), flush=True)
    return 0


def run_video(args) -> int:
    prompts, paths = _plan(args, "video")
    from multimodal.pipelines.output import export_to_video
    from multimodal.pipelines.text_to_video import TextToVideo

    pipe = load_pipeline(TextToVideo, args)
    for lo, chunk in _batches(prompts, args.batch_size):
        first = lo * args.num
        frames = pipe(chunk, num_videos_per_prompt=args.num, num_frames=args.frames, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, height=args.height, width=args.width,
                      num_candidates=args.candidates, generator=generators(args, len(chunk) * args.num, first),
                      output_type="np").frames
        for i, video in enumerate(frames, first):
            print(export_to_video(video, paths[i], fps=args.fps or pipe.model.config.fps), flush=True)
    return 0


def run_text(args) -> int:
    _check(args)
    from multimodal.pipelines.text_generation import TextGeneration

    pipe = load_pipeline(TextGeneration, args)
    out = pipe([args.prompt] * args.num, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generators(args, args.num))
    for text in out.text:
        print(text)
    return 0
