"""Several prompts in one `generate-image` / `generate-video` run: where they come from and where each file goes.

Prompts: the positional arguments, then the lines of `--prompts FILE` (UTF-8, one prompt per line; an empty line is
an error naming the file and line, not a skipped prompt). Every prompt gives `--num` outputs; output `i` counts
prompts first (prompt p, sample s -> i = p * num + s) and is drawn with seed `--seed + i`.

Output names (`-o`), all decided before any model loads, and two outputs mapped to one file is an error:

    -o out.png            one output: out.png; several: out-0.png, out-1.png, ...
    -o outdir/            a folder (also an existing folder, or a name without an extension):
                          outdir/0-a-large-red-circle.png, outdir/1-a-small-blue-square.png, ...
    -o "img/{slug}.png"   a pattern: {i} the output index, {slug} the prompt in lowercase words joined by '-'
                          (Python format syntax, so {i:03d} pads)
"""

from __future__ import annotations

import re
import string
from pathlib import Path

SLUG_CHARS = 60


class BatchError(ValueError):
    """A bad --prompts file or -o pattern; the CLI prints it in one line."""


def read_prompts(path: str) -> list[str]:
    """The prompts of a --prompts file, one per line; BatchError naming the file (and line) when it is unreadable,
    not UTF-8 text, empty, or has an empty line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise BatchError(f"cannot read --prompts {path}: {reason}") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise BatchError(f"--prompts {path}, line {number}: empty line (one prompt per line, none empty)")
    if not lines:
        raise BatchError(f"--prompts {path}: no prompts in the file")
    return [line.strip() for line in lines]


def gather_prompts(positional: list[str], prompts_file: str | None) -> list[str]:
    """Positional prompts, then the file's; BatchError when there are none or one is empty."""
    for k, p in enumerate(positional):
        if not p.strip():
            raise BatchError(f"prompt {k + 1} is empty")
    prompts = list(positional) + (read_prompts(prompts_file) if prompts_file else [])
    if not prompts:
        raise BatchError("give a prompt, or --prompts FILE with one prompt per line")
    return prompts


def slug(prompt: str) -> str:
    """'A large red circle!' -> 'a-large-red-circle' (lowercase letters and digits, at most SLUG_CHARS)."""
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    return "-".join(words)[:SLUG_CHARS].rstrip("-") or "prompt"


def _fields(pattern: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as exc:
        raise BatchError(f"bad -o pattern {pattern!r}: {exc}") from None


def output_paths(output: str, prompts: list[str], num: int, extension: str) -> list[Path]:
    """The file of every output (prompt-major, `num` per prompt) -> [len(prompts) * num] paths; BatchError when the
    pattern has an unknown field or two outputs would share a file. `extension` (".png", ".mp4") names the files
    of a folder."""
    total = len(prompts) * num
    fields = _fields(output)
    if fields:
        unknown = fields - {"i", "slug"}
        if unknown:
            raise BatchError(f"-o pattern {output!r}: unknown field(s) {', '.join('{' + f + '}' for f in sorted(unknown))} "
                             f"(use {{i}} and {{slug}})")
        try:
            paths = [Path(output.format(i=i, slug=slug(prompts[i // num]))) for i in range(total)]
        except (ValueError, IndexError) as exc:
            raise BatchError(f"bad -o pattern {output!r}: {exc}") from None
    else:
        path = Path(output)
        if output.endswith(("/", "\\")) or path.is_dir() or not path.suffix:
            width = len(str(total - 1))
            paths = [path / f"{i:0{width}d}-{slug(prompts[i // num])}{extension}" for i in range(total)]
        elif total == 1:
            paths = [path]
        else:
            paths = [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(total)]
    seen: dict[Path, int] = {}
    for i, p in enumerate(paths):
        j = seen.setdefault(p, i)
        if j != i:
            raise BatchError(f"-o {output!r} writes outputs {j} ({prompts[j // num]!r}) and {i} "
                             f"({prompts[i // num]!r}) to one file, {p}; add {{i}} to the pattern")
    return paths
