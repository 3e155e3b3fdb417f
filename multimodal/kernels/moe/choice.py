"""Which fast MoE path runs: the Triton kernels or ``torch._grouped_mm``, decided by a small timed table.

Neither path wins everywhere: on one H200 (torch 2.11, d 4096, I 2048, E 256, k 6) sorted ``torch._grouped_mm``
ran forward+backward at 215 / 356 / 410 TFLOP/s at 4k / 16k / 64k tokens where the Triton kernels ran at
153 / 238 / 248, but the balance depends on the GPU, the torch build, the dtype and the shape. So the op
measures instead of guessing:

- the key is (device, compute dtype, tokens rounded up to a power of two, H, I, E, k, training): one entry
  covers every call whose token count falls in the same power-of-two bucket;
- on the first call for a key, each candidate runs once untimed (Triton compiles, allocators warm up), the
  forward outputs are compared (a candidate that disagrees with the Triton path beyond the dtype's
  tolerance is disqualified, with a WARNING), then each runs a few times, interleaved, timed with CUDA
  events: forward+backward when the call is a training call, forward alone under ``no_grad``. The whole
  measurement costs a few times one call (milliseconds at small shapes) and happens once per key;
- the winner is stored in a process-level table (:data:`CHOICES`), logged at DEBUG with the whole table on
  the ``multimodal.kernels`` logger; later calls with that key read the table: a dictionary lookup on shapes
  and dtypes, no device work and no host synchronisation.

Measurement happens on CUDA devices only (:attr:`KernelChoice.device_types`). On the CPU, Triton runs through
the interpreter, which exists to check the kernels and whose time means nothing (``MULTIMODAL_KERNELS=auto``
with ``TRITON_INTERPRET=1`` keeps the Triton path there). While ``torch.compile`` traces or a CUDA graph is being
captured nothing is measured: a stored choice is used, else Triton. A test injects timings by replacing
:attr:`KernelChoice.timer`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["CHOICES", "Candidate", "ChoiceKey", "KernelChoice", "choice_key", "cuda_timer", "token_bucket"]

logger = logging.getLogger("multimodal.kernels")

#: a candidate: one call of a path on the real operands (forward, plus backward when training); returns the output
Candidate = Callable[[], torch.Tensor]
#: (device, dtype, token bucket, H, I, E, k, training)
ChoiceKey = tuple[str, str, int, int, int, int, int, bool]
#: the path that runs when nothing better is known
DEFAULT = "triton"


def token_bucket(tokens: int) -> int:
    """The power of two >= ``tokens`` (1 for 0 or 1): the token part of a choice key."""
    return 1 << max(0, int(tokens) - 1).bit_length()


def choice_key(device: torch.device, dtype: torch.dtype, T: int, H: int, I: int, E: int, k: int,  # noqa: E741
               training: bool) -> ChoiceKey:
    """The table key of one call (:data:`ChoiceKey`); ``device`` with its index ("cuda:0")."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return (str(device), str(dtype).removeprefix("torch."), token_bucket(T), H, I, E, k, bool(training))


def _tolerance(dtype: torch.dtype) -> float:
    """Relative forward disagreement (max abs difference / max abs value) that disqualifies a candidate."""
    return 5e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-2  # fp32 may be TF32 on one side


def cuda_timer(candidates: dict[str, Candidate], device: torch.device, reps: int = 3,
               budget_ms: float = 50.0) -> dict[str, float]:
    """Milliseconds per call of each candidate (min over ``reps`` CUDA-event timings, interleaved).

    One untimed warm-up call each first; a candidate that raises gets ``inf``, and one whose output disagrees
    with the first candidate's (the reference, Triton) beyond the dtype's tolerance gets ``inf`` too, with a
    WARNING. Stops early once every candidate has one timing and the round cost more than ``budget_ms``
    (large shapes: one timed call each is plenty there).
    """
    outs: dict[str, torch.Tensor] = {}
    times: dict[str, float] = {}
    for name, fn in candidates.items():
        try:
            outs[name] = fn().detach()
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run loses, and we say why
            logger.warning("multimodal.kernels.moe_ffn: %s failed while being measured (%s: %s); not using it",
                           name, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
            times[name] = math.inf
    torch.cuda.synchronize(device)
    names = [n for n in candidates if n in outs]
    if names:
        tol = _tolerance(outs[names[0]].dtype)
        ref = outs[names[0]].float()
        scale = ref.abs().max().item() or 1.0
        for name in names[1:]:
            err = (outs[name].float() - ref).abs().max().item() / scale
            if not err <= tol:  # NaN disqualifies too
                logger.warning("multimodal.kernels.moe_ffn: %s disagrees with %s (relative error %.3g); not using it",
                               name, names[0], err)
                times[name] = math.inf
    names = [n for n in names if n not in times]
    del outs
    best: dict[str, float] = {n: math.inf for n in names}
    for _ in range(reps):
        spent = 0.0
        for name in names:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            candidates[name]()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
            best[name] = min(best[name], ms)
            spent += ms
        if spent > budget_ms:
            break
    times.update(best)
    return times


@dataclass
class Choice:
    """One table entry: the winning path and the timings it won with (ms; empty when nothing was measured)."""

    path: str
    ms: dict[str, float] = field(default_factory=dict)


class KernelChoice:
    """The process-level table (key -> :class:`Choice`) and the measurement that fills it.

    Attributes:
        timer: ``timer(candidates, device) -> {name: ms}``; :func:`cuda_timer` by default; a test replaces it.
        device_types: device types on which a missing key is measured (``{"cuda"}``); elsewhere the default
            path runs and nothing is stored.
        table: the decisions so far.
    """

    def __init__(self, timer: Callable[[dict[str, Candidate], torch.device], dict[str, float]] | None = None,
                 device_types: frozenset[str] = frozenset({"cuda"})) -> None:
        self.timer = timer or cuda_timer
        self.device_types = set(device_types)
        self.table: dict[ChoiceKey, Choice] = {}

    def clear(self) -> None:
        """Forget every decision (the next call per key measures again)."""
        self.table.clear()

    def lookup(self, key: ChoiceKey) -> str | None:
        """The stored path for ``key``, or None: reads the table only (no device work, no host sync)."""
        entry = self.table.get(key)
        return None if entry is None else entry.path

    def choose(self, key: ChoiceKey, device: torch.device, candidates: Callable[[], dict[str, Candidate]]) -> str:
        """The path for ``key``: the stored one, else measure ``candidates()`` now (first name = the default).

        ``candidates`` is a factory so that a stored key builds nothing. Ties go to the earlier candidate.
        """
        stored = self.lookup(key)
        if stored is not None:
            return stored
        if device.type not in self.device_types or not _may_measure(device):
            return DEFAULT
        cands = candidates()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):  # not an outer checkpoint's hooks
            ms = self.timer(cands, device)
        del cands
        path = min(ms, key=lambda n: (ms[n], list(ms).index(n))) if ms else DEFAULT
        if not math.isfinite(ms.get(path, math.inf)):
            path = DEFAULT
        self.table[key] = Choice(path, dict(ms))
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("multimodal.kernels.moe_ffn: chose %s for %s\n%s", path, _describe(key), self.format())
        return path

    def format(self) -> str:
        """The table, one line per key: key, winner, each candidate's milliseconds."""
        if not self.table:
            return "(empty: nothing measured in this process)"
        lines = ["device dtype tokens<= H I E k training -> path (ms per call)"]
        for key, entry in sorted(self.table.items(), key=lambda kv: tuple(map(str, kv[0]))):
            times = ", ".join(f"{n} {v:.3f}" if math.isfinite(v) else f"{n} failed" for n, v in entry.ms.items())
            lines.append(f"{_describe(key)} -> {entry.path} ({times})")
        return "\n".join(lines)


def _describe(key: ChoiceKey) -> str:
    device, dtype, bucket, H, I, E, k, training = key  # noqa: E741
    return f"{device} {dtype} T<={bucket} H={H} I={I} E={E} k={k} {'fwd+bwd' if training else 'fwd'}"


def _may_measure(device: torch.device) -> bool:
    """False while torch.compile traces or the current CUDA stream is being captured into a graph."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_compiling", lambda: False)():
        return False
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return True


#: the process-level table used by :func:`~multimodal.kernels.moe.moe_ffn`
CHOICES = KernelChoice()
