"""`multimodal eval`: score generated images/videos against their prompts, or generated captions
against reference videos; prints a per-tag table and the JSON report."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score a folder of generated images/videos (or a file of generated captions) with the world's scorer",
        description=(
            "Media mode: FOLDER holds the generated files and a captions.jsonl of {\"file\", \"caption\"} rows "
            "(the prompts; --prompts to use another file). Caption mode (--captions GEN.jsonl): GEN.jsonl holds "
            "{\"file\", \"caption\"} rows of generated captions for the media of FOLDER, whose captions.jsonl "
            "holds the references."
        ),
    )
    p.add_argument("folder", help="folder of media files with a captions.jsonl")
    p.add_argument("--prompts", help="jsonl of {file, caption} prompts (default: FOLDER/captions.jsonl)")
    p.add_argument("--captions", help="jsonl of {file, caption} generated captions: caption mode")
    p.add_argument("--json", dest="json_out", help="also write the JSON report to this file")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from multimodal.cli import UserError
    from multimodal.data.files import MediaError
    from multimodal.eval.report import evaluate_captions, evaluate_media, format_table

    if not Path(args.folder).is_dir():
        raise UserError(f"{args.folder} is not a folder")

    def warn(message: str) -> None:
        print(f"multimodal eval: {message}", file=sys.stderr)

    try:
        if args.captions:
            report = evaluate_captions(args.captions, args.folder, args.prompts, on_error=warn)
        else:
            report = evaluate_media(args.folder, args.prompts, on_error=warn)
    except MediaError as exc:
        raise UserError(str(exc)) from exc
    print(format_table(report))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n", encoding="utf-8")
    return 0
