"""`multimodal info`: the package version and the named presets."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="print the version and the named backbone presets")
    p.set_defaults(func=run)


def run(args) -> int:
    import multimodal

    print(f"multimodal {multimodal.__version__}")
    return 0
