"""`torch.compile` of chosen parts of the model for the training step, falling back to eager with one warning.

`TrainConfig.compile` names the parts (`COMPILE_TARGETS`):

| part       | modules compiled                                               |
|------------|----------------------------------------------------------------|
| `heads`    | the image and video flow heads (`UnifiedModel.image_head` / `video_head`), each as one graph |
| `backbone` | every block of the backbone (`Transformer.layers`), each on its own (regional compilation) |

Each part's `forward` is replaced, on the instance (parameter names and checkpoints are unchanged), by a
`GuardedForward`: while gradients are enabled (the training step) it calls `torch.compile` of the original forward;
with gradients off (evaluation, the learning curve's sampling, export) it calls the original, so sampling at other
batch sizes never recompiles. The first call compiles (Dynamo traces, Inductor generates C++ on a CPU or Triton on
a GPU; for fixed shapes AOTAutograd compiles the backward graph in that same call). Any exception there — no C++
compiler, an unsupported op, a backend bug — is caught: the run warns once (`RuntimeWarning`, naming the part and
the error), every guarded part of the model goes back to its original forward for the rest of the run, and the
failed call is repeated eagerly, so the step never crashes and computes what eager would. An error that eager
raises too (a shape mistake) is raised as usual.

`graph_breaks(fn, *args)` counts the graphs and graph breaks Dynamo makes of one call, with the reasons and where
they happen: what `benchmarks/training.py --graph-breaks` reports for each task's whole loss.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .config import COMPILE_TARGETS

BACKEND = "inductor"                                   # torch.compile's backend for `compile_model` (tests swap it)


def compile_parts(model: nn.Module, target: str) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs `target` compiles in `model` (a `UnifiedModel`, or a text-only `Transformer`)."""
    if target not in COMPILE_TARGETS:
        raise ValueError(f"unknown compile target {target!r}; choose from {list(COMPILE_TARGETS)}")
    if target == "heads":
        if not hasattr(model, "image_head"):
            raise ValueError("compile target 'heads' needs a model with flow heads (a run with media tasks); this "
                             f"{type(model).__name__} has none")
        return [("image_head", model.image_head), ("video_head", model.video_head)]
    backbone = model.backbone if hasattr(model, "backbone") else model
    return [(f"backbone.layers.{i}", layer) for i, layer in enumerate(backbone.layers)]


@dataclass
class CompileState:
    """Shared by the guarded parts of one model: whether compiling has failed (then every part runs eagerly)."""

    failed: str = ""                                   # "<part>: <error>" of the first failure
    guards: list["GuardedForward"] = field(default_factory=list)
    paused: bool = False                               # inside `suspended()`: every part runs its original forward

    @contextlib.contextmanager
    def suspended(self):
        """Run the original forwards inside (for tools that trace or count ops themselves: FLOP counters,
        `graph_breaks`), without counting it as a failure."""
        before, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = before

    def fail(self, part: str, error: BaseException) -> None:
        if not self.failed:
            root = error                                     # Dynamo wraps a backend's error: name the innermost
            while root.__cause__ is not None or getattr(root, "inner_exception", None) is not None:
                root = root.__cause__ if root.__cause__ is not None else root.inner_exception
            first = (str(root).strip().splitlines() or [""])[0][:300]
            self.failed = f"{part}: {type(root).__name__}: {first}"
            warnings.warn(f"torch.compile failed on {self.failed}; the training step runs eagerly from here on "
                          f"(every compiled part of the model)", RuntimeWarning, stacklevel=3)


class GuardedForward:
    """A module's forward that runs `torch.compile(original)` while gradients are enabled, falling back to the
    original (for good, for every part sharing `state`) when compiling or running the compiled code fails."""

    def __init__(self, name: str, module: nn.Module, state: CompileState, backend: str | Callable,
                 **compile_kwargs: Any) -> None:
        self.name, self.state = name, state
        self.original = module.forward                               # the bound method of the class
        self.compiled = torch.compile(self.original, backend=backend, **compile_kwargs)
        self.calls = 0                                               # compiled calls that returned

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.state.failed or self.state.paused or not torch.is_grad_enabled():
            return self.original(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:                                   # noqa: BLE001 - any compile failure
            result = self.original(*args, **kwargs)                  # an error eager raises too propagates here
            self.state.fail(self.name, error)
            return result
        self.calls += 1
        return out


def compile_model(model: nn.Module, targets: "list[str] | tuple[str, ...]", backend: str | Callable | None = None,
                  **compile_kwargs: Any) -> CompileState:
    """Guard the forward of every part of `targets` in `model` in place (see the module docstring); returns the
    shared state (`state.failed` says whether and where compiling failed)."""
    state = CompileState()
    backend = BACKEND if backend is None else backend
    for target in dict.fromkeys(targets):
        for name, module in compile_parts(model, target):
            guard = GuardedForward(name, module, state, backend, **compile_kwargs)
            module.forward = guard                                   # on the instance: state_dict is unchanged
            state.guards.append(guard)
    return state


def graph_breaks(fn: Callable, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Dynamo's view of one call of `fn`: graphs, graph breaks and (at most 10 distinct) break reasons."""
    import torch._dynamo

    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args, **kwargs)
    reasons = list(dict.fromkeys(_reason(b) for b in explained.break_reasons))
    torch._dynamo.reset()
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count, "reasons": reasons[:10]}


def _reason(graph_break: Any) -> str:
    """One line per graph break: Dynamo's reason and the innermost frame of our code (or torch's) it broke in."""
    text = (str(getattr(graph_break, "reason", graph_break)).strip().splitlines() or [""])[0]
    stack = list(getattr(graph_break, "user_stack", None) or [])
    if stack:
        frame = stack[-1]
        path = frame.filename.replace("\\", "/")
        path = path[path.rfind("multimodal/"):] if "multimodal/" in path else path.rsplit("/", 1)[-1]
        text += f" at {path}:{frame.lineno} ({frame.name})"
    return text
