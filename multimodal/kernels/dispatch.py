"""The one decision every kernel op makes: run the Triton kernel, or the PyTorch reference?

Every op in ``multimodal.kernels`` has a readable fp32 reference (``naive.py``) and a Triton kernel
(``triton.py``); its ``op.py`` asks :func:`use_triton` which one to run (DESIGN.md, "Kernels").

The environment variable ``MULTIMODAL_KERNELS`` chooses the policy:

``auto`` (default)
    Triton when the tensors live on a CUDA device and Triton imports; Triton on the CPU when
    ``TRITON_INTERPRET=1`` was set before Triton was imported (the Triton interpreter runs every
    program serially through NumPy, see ``shared/reference/performance.md`` §2, "Triton interpreter");
    the reference otherwise.
``triton``
    Always Triton. On the CPU this needs the interpreter; without it a :class:`KernelUnavailableError`
    names the problem instead of silently running something else.
``torch``
    Always the reference.

Whenever ``auto`` falls back to the reference, the reason is logged once per (op, reason) on the
``multimodal.kernels`` logger, never silently: at DEBUG for the routine case (CPU tensors without the
interpreter: every CPU run), at WARNING when a GPU run loses its kernel (no Triton, an unknown device).

Two more things every op shares:

- :func:`common_dtype` / :func:`cast`: operands that meet in one ``tl.dot`` (or any other Triton op
  that needs one dtype) are cast to one dtype on the host before the launch. Under ``torch.autocast``
  a call can mix dtypes (bf16 activations from a ``Linear``, fp32 from a norm or a parameter); the
  kernel then sees the autocast dtype, which is what ``torch.matmul`` would have used.
- :func:`run_or_fall_back`: if Triton cannot compile a kernel for a call's dtypes (a
  ``CompilationError`` at the first launch), the op runs its PyTorch reference instead, says so once
  at WARNING, and does not try that (op, dtypes) again. Under ``MULTIMODAL_KERNELS=triton`` the error
  is raised instead. :func:`reference_vjp` is the same fallback for a custom backward.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import torch

__all__ = [
    "KernelUnavailableError",
    "Backend",
    "cast",
    "cdiv",
    "common_dtype",
    "dot_precision",
    "dtype_signature",
    "interpreter_active",
    "kernel_policy",
    "next_power_of_2",
    "reference_vjp",
    "run_or_fall_back",
    "triton_available",
    "use_triton",
]

T = TypeVar("T")

logger = logging.getLogger("multimodal.kernels")

Backend = Literal["auto", "triton", "torch"]
_POLICIES: tuple[str, ...] = ("auto", "triton", "torch")
_ENV = "MULTIMODAL_KERNELS"
_logged: set[tuple[str, str]] = set()
#: (op, dtype signature) pairs whose Triton kernels failed to compile: they run the reference from then on
_unavailable: set[tuple[str, tuple[str, ...]]] = set()


class KernelUnavailableError(RuntimeError):
    """Raised when Triton was forced (``MULTIMODAL_KERNELS=triton``) but cannot run these tensors."""


def kernel_policy() -> Backend:
    """Read ``MULTIMODAL_KERNELS`` (``auto`` | ``triton`` | ``torch``); raise on anything else."""
    value = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if value not in _POLICIES:
        raise ValueError(f"{_ENV}={value!r} is not one of {', '.join(_POLICIES)}")
    return value  # type: ignore[return-value]


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_active() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors through NumPy.

    Triton reads the variable when a kernel is decorated, so it must be set before ``triton`` is
    imported; setting it later in a running process has no effect on already-imported kernels.
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _log_once(op: str, reason: str, level: int = logging.WARNING) -> None:
    key = (op, reason)
    if key not in _logged:
        _logged.add(key)
        logger.log(level, "multimodal.kernels.%s: using the PyTorch reference (%s)", op, reason)


def use_triton(op: str, *tensors: torch.Tensor) -> bool:
    """Decide whether ``op`` runs its Triton kernel on ``tensors`` (all on one device).

    Args:
        op: name of the op, used in the one-time log line (e.g. ``"moe_ffn"``).
        tensors: the op's tensor inputs; the first one's device decides.

    Returns:
        True for Triton, False for the reference. Raises :class:`KernelUnavailableError` when the
        policy is ``triton`` and Triton cannot run here.
    """
    policy = kernel_policy()
    if policy == "torch":
        return False
    device = tensors[0].device
    if not triton_available():
        reason = "the triton package is not installed"
    elif device.type == "cuda":
        return True
    elif device.type == "cpu" and interpreter_active():
        return True
    elif device.type == "cpu":
        reason = "CPU tensors and TRITON_INTERPRET is not set"
    else:
        reason = f"no Triton backend for device type {device.type!r}"
    if policy == "triton":
        raise KernelUnavailableError(f"{_ENV}=triton but {op} cannot run Triton here: {reason}")
    # CPU tensors are the routine case (every CPU run): DEBUG, not a line on the user's terminal
    _log_once(op, reason, logging.DEBUG if device.type == "cpu" else logging.WARNING)
    return False


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids, without importing Triton (``triton.cdiv``)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), for tile sizes, without importing Triton."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def common_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The one float dtype in which ``tensors`` (operands that meet in one kernel op) are passed to Triton.

    ``tl.dot`` and friends need both operands in one dtype; the host casts to this one first (:func:`cast`).
    None and non-float tensors are ignored. All float tensors agree: their dtype. They disagree: under
    ``torch.autocast`` enabled for their device type, the autocast dtype (bf16 queries and fp32 keys in a
    bf16 autocast region meet in bf16, as ``torch.matmul`` would compute them); otherwise
    ``torch.promote_types`` over them (no precision is lost). Raises ValueError without any float tensor.
    """
    floats = [t for t in tensors if t is not None and t.is_floating_point()]
    if not floats:
        raise ValueError("common_dtype: no floating-point tensor among the operands")
    dtypes = {t.dtype for t in floats}
    if len(dtypes) == 1:
        return floats[0].dtype
    device_type = floats[0].device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    out = floats[0].dtype
    for t in floats[1:]:
        out = torch.promote_types(out, t.dtype)
    return out


def cast(dtype: torch.dtype, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """``tensors`` with every float one in ``dtype`` (differentiable ``.to``; a no-op where it already is)."""
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t
                 for t in tensors)


def dtype_signature(*tensors: Any) -> tuple[str, ...]:
    """("bfloat16", "float32", "none", ...): the dtypes of a call's inputs, the key of :func:`run_or_fall_back`."""
    return tuple(str(t.dtype).removeprefix("torch.") if isinstance(t, torch.Tensor)
                 else "none" if t is None else type(t).__name__ for t in tensors)


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Triton's exceptions for 'this kernel cannot be compiled for these arguments' (front end, ptxas)."""
    from triton.compiler.errors import CompilationError
    import triton.runtime.errors as runtime_errors

    ptxas = getattr(runtime_errors, "PTXASError", None)
    return (CompilationError,) + ((ptxas,) if ptxas is not None else ())


def run_or_fall_back(op: str, signature: tuple[str, ...], kernel: Callable[[], T], reference: Callable[[], T]) -> T:
    """Run ``kernel()`` (the op's Triton path); if Triton cannot compile it for this call, ``reference()``.

    Args:
        op: op name for the log line and the record (``"sparse_mqa"``, ``"sparse_mqa.backward"``).
        signature: the call's input dtypes (:func:`dtype_signature`): a failure is remembered for this
            (op, signature), whose later calls go straight to ``reference()``.
        kernel / reference: zero-argument callables returning the same thing (outputs in the same dtypes).

    A Triton compilation error (raised at the first launch of a kernel for new argument types) is logged
    once per (op, reason) at WARNING and the reference runs instead: a training step never crashes on it.
    With ``MULTIMODAL_KERNELS=triton`` the error is re-raised: forcing Triton means "show me the failure".
    Any other exception propagates unchanged.
    """
    key = (op, signature)
    if key in _unavailable:
        return reference()
    try:
        return kernel()
    except _compile_errors() as exc:
        if kernel_policy() == "triton":
            raise
        _unavailable.add(key)
        _log_once(op, f"Triton cannot compile it for input dtypes {', '.join(signature)}: {_summary(exc)}")
        return reference()


def _summary(exc: BaseException) -> str:
    """One line naming a compilation error: its message (``CompilationError.error_message``), not the source excerpt."""
    text = getattr(exc, "error_message", None) or str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}"


def reference_vjp(fn: Callable[..., Any], inputs: Sequence[Any], needs_grad: Sequence[bool],
                  grad_outputs: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``fn(*inputs)`` by autograd through the reference: the fallback of a custom backward.

    Args:
        fn: the op's reference (``naive_*``), called on detached copies of ``inputs``.
        inputs: the forward's inputs (tensors in the dtypes the Function received, or plain values).
        needs_grad: ``ctx.needs_input_grad``, one flag per input.
        grad_outputs: the incoming gradients, one per output of ``fn`` (None where the output got none).

    Returns:
        One entry per input: its gradient (in its dtype), or None.
    """
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(bool(need)) if isinstance(t, torch.Tensor) and t.is_floating_point()
                  else t for t, need in zip(inputs, needs_grad)]
        outs = fn(*leaves)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None and o.requires_grad]
        wrt = [(i, t) for i, (t, need) in enumerate(zip(leaves, needs_grad))
               if need and isinstance(t, torch.Tensor) and t.requires_grad]
        grads: list[torch.Tensor | None] = [None] * len(inputs)
        if pairs and wrt:
            got = torch.autograd.grad([o for o, _ in pairs], [t for _, t in wrt], [g.to(o.dtype) for o, g in pairs],
                                      allow_unused=True)
            for (i, t), g in zip(wrt, got):
                grads[i] = g if g is not None else torch.zeros_like(t)
    return tuple(grads)


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot`` that mirrors PyTorch's own matmul policy for ``dtype``.

    fp32 inputs use TF32 only when ``torch.backends.cuda.matmul.allow_tf32`` is on (it is off by
    default), so an fp32 call to a kernel is as exact as an fp32 ``torch.matmul``. Half types use
    the tensor cores natively.
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
