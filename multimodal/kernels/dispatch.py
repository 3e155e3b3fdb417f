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

Whenever ``auto`` falls back to the reference, the reason is logged once per (op, reason) at WARNING
level on the ``multimodal.kernels`` logger, never silently.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Literal

import torch

__all__ = [
    "KernelUnavailableError",
    "Backend",
    "dot_precision",
    "interpreter_active",
    "kernel_policy",
    "triton_available",
    "use_triton",
]

logger = logging.getLogger("multimodal.kernels")

Backend = Literal["auto", "triton", "torch"]
_POLICIES: tuple[str, ...] = ("auto", "triton", "torch")
_ENV = "MULTIMODAL_KERNELS"
_logged: set[tuple[str, str]] = set()


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


def _log_once(op: str, reason: str) -> None:
    key = (op, reason)
    if key not in _logged:
        _logged.add(key)
        logger.warning("multimodal.kernels.%s: using the PyTorch reference (%s)", op, reason)


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
    _log_once(op, reason)
    return False


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` for ``tl.dot`` that mirrors PyTorch's own matmul policy for ``dtype``.

    fp32 inputs use TF32 only when ``torch.backends.cuda.matmul.allow_tf32`` is on (it is off by
    default), so an fp32 call to a kernel is as exact as an fp32 ``torch.matmul``. Half types use
    the tensor cores natively.
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"
