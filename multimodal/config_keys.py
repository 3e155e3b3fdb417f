"""The checks every config dataclass shares: a failed condition as a `ValueError`, and unknown keys named.

    check(width > 0, f"width must be > 0, got {width}")
    reject_unknown_keys(FlowHeadConfig, {"widht": 64})
    # ValueError: unknown FlowHeadConfig keys: ['widht']
"""

from __future__ import annotations

import dataclasses
from typing import Any


def check(cond: bool, msg: str) -> None:
    """Raise `ValueError(msg)` unless `cond`."""
    if not cond:
        raise ValueError(msg)


def reject_unknown_keys(cls: type, data: dict[str, Any], name: str | None = None) -> None:
    """Raise `ValueError("unknown <name> keys: [...]")` (sorted) if `data` has keys that are not fields of the
    dataclass `cls` (`name` defaults to the class name)."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    check(not unknown, f"unknown {name or cls.__name__} keys: {unknown}")
