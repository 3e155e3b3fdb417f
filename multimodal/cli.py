"""The `multimodal` command.

Each feature module contributes one sub-command through an ``add_parser(subparsers)`` function;
``COMMAND_MODULES`` lists them. Those modules import nothing heavy at the top (torch loads inside the commands), so
``multimodal --help`` and argument errors answer without loading torch. Errors a user can cause (a bad file, an
unknown preset) are printed as one line on stderr and the command exits with status 2.

Logging: the package's messages (e.g. which kernel an op runs, ``multimodal.kernels``) are DEBUG and hidden by
default; ``-v`` / ``--verbose`` (before or after the sub-command) shows them, and ``MULTIMODAL_LOG_LEVEL`` (DEBUG,
INFO, WARNING, ERROR) sets the level when ``-v`` is not given. Warnings stay visible.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMAND_MODULES = (
    "multimodal.commands.info",
    "multimodal.commands.train",
    "multimodal.commands.train_autoencoder",
    "multimodal.commands.generate",
    "multimodal.commands.caption",
    "multimodal.commands.world",
    "multimodal.commands.eval",
    "multimodal.commands.train_text_tokenizer",
)
LOG_LEVEL_ENV = "MULTIMODAL_LOG_LEVEL"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_handler: logging.Handler | None = None


class UserError(Exception):
    """An error caused by the user's input; the CLI prints it in one line."""


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever `sys.stderr` is when a record comes (a redirected or captured stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _add_verbose(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default,
                        help=f"show the package's debug messages (e.g. kernel choices); or set {LOG_LEVEL_ENV}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multimodal", description="DeepSeek-V4-style unified multimodal model.")
    _add_verbose(parser, 0)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    for command in sub.choices.values():     # -v after the sub-command too; SUPPRESS keeps a -v given before it
        _add_verbose(command, argparse.SUPPRESS)
    return parser


def log_level(verbose: int) -> int:
    """DEBUG with -v, else $MULTIMODAL_LOG_LEVEL (a level name), else WARNING; UserError on an unknown name."""
    if verbose:
        return logging.DEBUG
    name = os.environ.get(LOG_LEVEL_ENV, "").strip().upper() or "WARNING"
    if name not in _LEVELS:
        raise UserError(f"{LOG_LEVEL_ENV}={os.environ[LOG_LEVEL_ENV]!r} is not a log level ({', '.join(_LEVELS)})")
    return getattr(logging, name)


def configure_logging(level: int) -> None:
    """One stderr handler on the `multimodal` logger at `level` ('LEVEL: message' lines); replaces the last call's."""
    global _handler
    logger = logging.getLogger("multimodal")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(log_level(getattr(args, "verbose", 0)))
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, KeyError) as exc:  # one line, non-zero exit
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"multimodal {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    # run the imported module's main, so `python -m multimodal.cli` catches the same UserError class
    # that commands raise (multimodal.cli.UserError, not __main__.UserError)
    from multimodal.cli import main as _main

    sys.exit(_main())
