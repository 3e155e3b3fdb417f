"""`multimodal caption-video` and `caption-image`: describe media files with the captioning pipelines.

    multimodal caption-video clip.mp4 other.mp4 --model runs/pipeline
    multimodal caption-image pic.png --max-new-tokens 24

One line per file: `path<TAB>caption` when several files are given, the caption alone for one. A missing or unreadable
file is reported in one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

from .generate import add_model_arguments, generators, load_pipeline


def add_parser(sub) -> None:
    for name, what in (("caption-video", "video"), ("caption-image", "image")):
        p = sub.add_parser(name, help=f"describe {what} files in words")
        p.add_argument("files", nargs="+", help=f"{what} files")
        p.add_argument("--prompt", default=None, help="optional text after the media, e.g. a question")
        p.add_argument("--max-new-tokens", type=int, default=32)
        p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
        p.add_argument("--temperature", type=float, default=1.0)
        p.add_argument("--top-p", type=float, default=1.0)
        if what == "video":
            p.add_argument("--frames", type=int, default=None, help="frames sampled from each file (default: model's)")
        add_model_arguments(p)
        p.set_defaults(func=run, what=what)


def run(args) -> int:
    from multimodal.io.errors import check_media_path

    for f in args.files:                       # fail on a bad path before loading torch or any model
        check_media_path(f)
    from multimodal.pipelines.image_caption import ImageCaption
    from multimodal.pipelines.video_caption import VideoCaption

    cls = VideoCaption if args.what == "video" else ImageCaption             # the pipelines' logic, without diffusers
    pipe = load_pipeline(cls, args)
    extra = {"num_frames": args.frames} if args.what == "video" else {}
    out = pipe(args.files, prompt=args.prompt, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
               temperature=args.temperature, top_p=args.top_p, generator=generators(args, len(args.files)), **extra)
    for path, text in zip(args.files, out.text):
        print(text if len(args.files) == 1 else f"{path}\t{text}")
    return 0
