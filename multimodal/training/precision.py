"""Which precision a training run computes in; on a CPU, bf16 is ruled out where a timed matmul shows it slow.

CPUs differ more than their names say: on an AVX2-only 2-core Xeon bf16 matmuls ran ~100x slower than fp32; on an
AVX-512-BF16 / AMX one a bf16-autocast matmul runs 2.5-7x faster than fp32 (one thread, 256-4096 rows), yet the
built-in model's whole training step there ran 1.5x *slower* in bf16 autocast (`python benchmarks/training.py
--device cpu --recipes shapes-demo,shapes-demo+fp32`: 18 vs 27 samples/s; the backbone's many small ops, not its
matmuls, set the pace). So a matmul timing can rule bf16 out but cannot rule it in, and the policy is:

    precision  CUDA                                   CPU
    "fp32"     fp32                                   fp32
    "auto"     bf16 autocast if the GPU supports it   fp32 (measure a recipe both ways with benchmarks/training.py,
                                                      `+fp32` / `+bf16`, and ask for bf16 where it wins)
    "bf16"     bf16 autocast                          bf16 autocast, unless a matmul timed at start-up
                                                      (`bf16_speedup`) runs < BF16_MIN_SPEEDUP x fp32's speed:
                                                      then fp32, with one warning naming the speed

(the last row is what lets a run written for a bf16-capable CPU, e.g. the `shapes-demo` preset, resume on an
AVX2-only one.) The timing costs milliseconds on a CPU with bf16 units and about 2 s where bf16 is 100x slower; it is
measured once per process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import torch

BF16_MIN_SPEEDUP = 0.5       # "bf16" falls back to fp32 on a CPU where bf16 is more than 2x slower
MATMUL_SHAPE = (256, 512, 512)   # [M, K] @ [K, N]: a micro-batch of tokens through a tiny model's projection
REPEATS = 7                  # alternating rounds; the fastest of each counts


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run computes in: `dtype` for autocast (None: fp32, no autocast), and why (one line for the log)."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return "bf16 autocast" if self.dtype is not None else "fp32"


@lru_cache(maxsize=None)
def bf16_speedup(device_type: str = "cpu", shape: tuple[int, int, int] = MATMUL_SHAPE, repeats: int = REPEATS) -> float:
    """fp32 matmul seconds / bf16-autocast matmul seconds on this machine's `device_type` (> 1: bf16 is faster).

    The same fp32 inputs go through both paths on one CPU thread, one warm-up each, then `repeats` rounds
    alternating the two; the fastest round of each counts, so other processes' load, which only ever adds time,
    falls on both alike. One thread, because with two on a 2-core machine shared with another job the bf16 timing
    collapsed (0.3x fp32's speed, where one thread measured 2.3-2.9x both idle and loaded): the choice is about the
    CPU's units, not the moment's load. Where bf16 is clearly slow (< 0.1x after two rounds) it stops early.
    Measured once per process for each argument set."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device_type)
    b = torch.randn(k, n, generator=gen).to(device_type)
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)

    def fp32() -> float:
        start = time.perf_counter()
        a @ b
        sync()
        return time.perf_counter() - start

    def bf16() -> float:
        start = time.perf_counter()
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            a @ b
        sync()
        return time.perf_counter() - start

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                  # the CPU's units, not the moment's load (docstring)
    try:
        fp32(), bf16()                                        # warm-up: kernel selection, allocation
        best_fp32 = best_bf16 = float("inf")
        for round_ in range(repeats):
            best_fp32, best_bf16 = min(best_fp32, fp32()), min(best_bf16, bf16())
            if round_ >= 1 and best_fp32 / best_bf16 < 0.1:
                break
    finally:
        torch.set_num_threads(threads)
    return best_fp32 / max(best_bf16, 1e-9)


def choose_precision(precision: str, device: torch.device, speedup: float | None = None) -> PrecisionChoice:
    """The autocast dtype for `precision` ("auto", "bf16", "fp32") on `device`; on a CPU, `speedup` (default: the
    timed `bf16_speedup()`) may overrule "bf16" (module docstring)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be one of 'auto', 'bf16', 'fp32', got {precision!r}")
    if precision == "fp32":
        return PrecisionChoice(None, "precision 'fp32'")
    if device.type == "cuda":
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return PrecisionChoice(torch.bfloat16, f"precision {precision!r} on CUDA")
        return PrecisionChoice(None, "precision 'auto': this GPU does not support bf16")
    if device.type != "cpu":
        return PrecisionChoice(torch.bfloat16 if precision == "bf16" else None, f"precision {precision!r}")
    if precision == "auto":
        return PrecisionChoice(None, "precision 'auto' on a CPU: fp32")
    speedup = bf16_speedup("cpu") if speedup is None else speedup
    timed = f"a bf16 matmul ran {speedup:.2f}x fp32's speed on this CPU (timed at start-up)"
    if speedup < BF16_MIN_SPEEDUP:
        return PrecisionChoice(None, f"warning: precision 'bf16' asked for, but {timed}: training in fp32 instead")
    return PrecisionChoice(torch.bfloat16, f"precision 'bf16': {timed}")


__all__ = ["PrecisionChoice", "bf16_speedup", "choose_precision", "BF16_MIN_SPEEDUP"]
