"""`multimodal generate-image`, `generate-video`, `generate-text`: the generation pipelines from the command line.

    multimodal generate-image "a red circle above a blue square" -o out.png --seed 0 --steps 28 --guidance 3
    multimodal generate-video "a small blue square moves left" -o out.mp4 --num 2     # out-0.mp4, out-1.mp4
    multimodal generate-image "a large red circle" -o red.png --candidates 8           # the best of 8 drafts
    multimodal generate-text "a red" --max-new-tokens 16

`--model` takes a saved pipeline folder or a built-in model name (default: the built-in model `shapes`, shipped inside the package).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --seed, --device: shared by every generating / captioning command."""
    p.add_argument("--model", default="shapes", help="saved pipeline folder or built-in model name (default: shapes)")
    p.add_argument("--seed", type=int, default=0, help="random seed (sample i uses seed + i)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def load_pipeline(cls, args):
    """The pipeline `cls` from --model on --device; a missing model or device is a one-line UserError."""
    from multimodal.cli import UserError
    from multimodal.pipelines.base import ModelNotFoundError

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


def generators(args, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(args.seed + i) for i in range(n)]


def numbered(path: Path, i: int, n: int) -> Path:
    """out.png -> out.png for one output, out-0.png, out-1.png ... for several."""
    return path if n == 1 else path.with_name(f"{path.stem}-{i}{path.suffix}")


def add_parser(sub) -> None:
    for name, help_ in (("generate-image", "generate images from a text prompt"),
                        ("generate-video", "generate a video (mp4, webm, gif, ...) from a text prompt")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("prompt", help="what to draw, e.g. 'a red circle above a blue square'")
        p.add_argument("-o", "--output", required=True, help="output file; several outputs get -0, -1, ... suffixes")
        p.add_argument("--num", type=int, default=1, help="how many samples")
        p.add_argument("--steps", type=int, default=28, help="denoising steps")
        p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (<= 1: off)")
        p.add_argument("--height", type=int, default=None)
        p.add_argument("--width", type=int, default=None)
        p.add_argument("--candidates", type=int, default=None, metavar="K",
                       help="draw K drafts per output and keep the one the model reads the prompt back from best "
                            "(1: no ranking; default: multimodal.pipelines.rerank.DEFAULT_CANDIDATES)")
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
    if hasattr(args, "candidates"):
        from multimodal.pipelines.rerank import DEFAULT_CANDIDATES, MAX_CANDIDATES

        args.candidates = DEFAULT_CANDIDATES if args.candidates is None else args.candidates
        if not 1 <= args.candidates <= MAX_CANDIDATES:
            raise UserError(f"--candidates must be in [1, {MAX_CANDIDATES}], got {args.candidates}")


def run_image(args) -> int:
    from multimodal.io import write_image
    from multimodal.pipelines import TextToImagePipeline

    _check(args)
    out = Path(args.output)
    pipe = load_pipeline(TextToImagePipeline, args)
    images = pipe(args.prompt, num_images_per_prompt=args.num, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, height=args.height, width=args.width, num_candidates=args.candidates,
                  generator=generators(args, args.num), output_type="pil").images
    for i, image in enumerate(images):
        print(write_image(numbered(out, i, args.num), image))
    return 0


def run_video(args) -> int:
    from multimodal.pipelines import TextToVideoPipeline, export_to_video

    _check(args)
    out = Path(args.output)
    pipe = load_pipeline(TextToVideoPipeline, args)
    frames = pipe(args.prompt, num_videos_per_prompt=args.num, num_frames=args.frames, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, height=args.height, width=args.width, num_candidates=args.candidates,
                  generator=generators(args, args.num), output_type="np").frames
    for i, video in enumerate(frames):
        print(export_to_video(video, numbered(out, i, args.num), fps=args.fps or pipe.model.config.fps))
    return 0


def run_text(args) -> int:
    from multimodal.pipelines import TextGenerationPipeline

    _check(args)
    pipe = load_pipeline(TextGenerationPipeline, args)
    out = pipe([args.prompt] * args.num, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generators(args, args.num))
    for text in out.text:
        print(text)
    return 0
