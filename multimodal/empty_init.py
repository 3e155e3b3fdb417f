"""Build modules to load weights into: parameters are allocated but not initialised.

    with torch.device(device), empty_init():
        model = UnifiedModel(config)           # torch.empty storage, as `to_empty` leaves it
    load_model(model, "model.safetensors")     # every parameter overwritten (missing keys are an error)

Random initialisers (`Tensor.normal_` / `uniform_` and the `torch.nn.init` functions built on them) return their
tensor unchanged inside the block; everything else (constant fills, computed buffers such as rotary frequencies) runs
as usual. Drawing random values only
to overwrite them costs a few tenths of a second per load on a small CPU, and the usual alternative, building on the
meta device, runs `normal_` and `arange` there through Python references that import torch._dynamo (about a second
on every `multimodal` command's start).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

_RANDOM_FILLS = (torch.Tensor.normal_, torch.Tensor.uniform_)


def _is_initialiser(func) -> bool:
    return func in _RANDOM_FILLS or getattr(func, "__module__", None) == "torch.nn.init"


class _SkipInitialisers(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_initialiser(func):
            # the tensor to fill: the first positional argument, or `tensor=` (as torch.nn.init passes it on)
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor):
                return target
        return func(*args, **kwargs)


@contextmanager
def empty_init() -> Iterator[None]:
    """Skip random parameter initialisers inside the block (see the module docstring)."""
    with _SkipInitialisers():
        yield
