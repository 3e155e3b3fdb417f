"""The `multimodal` command.

Each feature module contributes one sub-command through an ``add_parser(subparsers)`` function;
``COMMAND_MODULES`` lists them. Errors a user can cause (a bad file, an unknown preset) are printed as
one line on stderr and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "multimodal.commands.info",
    "multimodal.commands.train",
    "multimodal.commands.train_autoencoder",
    "multimodal.commands.world",
    "multimodal.commands.eval",
)


class UserError(Exception):
    """An error caused by the user's input; the CLI prints it in one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multimodal", description="DeepSeek-V4-style unified multimodal model.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, KeyError) as exc:  # one line, non-zero exit
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"multimodal {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
