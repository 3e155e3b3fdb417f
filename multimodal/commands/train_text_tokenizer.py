"""`multimodal train-text-tokenizer`: train the byte-level BPE text tokenizer on caption files.

Example::

    multimodal train-text-tokenizer captions.txt --vocab-size 4096 --out runs/tokenizer

Each non-empty line of each input file is one text. Writes ``tokenizer.json`` (Hugging Face format)
with the package's special tokens at ids 0..8.
"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("train-text-tokenizer", help="train the byte-level BPE text tokenizer on caption files")
    p.add_argument("inputs", nargs="+", help="text files, one caption per line")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--out", default="runs/tokenizer", help="output folder (or .json path)")
    p.set_defaults(func=run)


def _lines(paths: list[str]):
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no such caption file: {path}")
        with path.open(encoding="utf-8", errors="strict") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.strip():
                    yield line


def run(args) -> int:
    from multimodal.tokenizers.text import TextTokenizer

    for name in args.inputs:  # fail before training on a missing file
        if not Path(name).is_file():
            raise FileNotFoundError(f"no such caption file: {name}")
    tok = TextTokenizer.train(_lines(args.inputs), vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    path = tok.save(args.out)
    print(f"wrote {path}: {tok.vocab_size} tokens")
    return 0
