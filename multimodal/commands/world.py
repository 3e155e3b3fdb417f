"""`multimodal world`: write a sample of the shapes-and-digits world (PNG, mp4, captions.jsonl) to a folder."""

from __future__ import annotations

import time


def add_parser(sub) -> None:
    p = sub.add_parser(
        "world",
        help="write images (PNG), videos (mp4) and captions.jsonl of the shapes-and-digits world to a folder",
    )
    p.add_argument("out", help="output folder (created if missing)")
    p.add_argument("--split", default="test", help="train, validation, test or held-out (default: test)")
    p.add_argument("--images", type=int, default=16, help="number of images (default: 16)")
    p.add_argument("--videos", type=int, default=4, help="number of 17-frame videos (default: 4)")
    p.add_argument("--start", type=int, default=0, help="index of the first seed inside the split (default: 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from multimodal.cli import UserError
    from multimodal.data.export import CAPTIONS_FILE, WorldExportConfig, write_world

    try:
        config = WorldExportConfig(split=args.split, images=args.images, videos=args.videos, start=args.start)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    start = time.perf_counter()
    rows = write_world(args.out, config)
    seconds = time.perf_counter() - start
    print(f"wrote {config.images} images and {config.videos} videos of split {config.split!r} to {args.out} in {seconds:.1f} s")
    print(f"captions: {args.out}/{CAPTIONS_FILE}")
    for row in rows[:3] + ([rows[-1]] if len(rows) > 3 else []):
        print(f"  {row['file']}: {row['caption']}")
    return 0
