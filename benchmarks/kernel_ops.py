"""Side-by-side timings of the kernel ops against their baselines, one JSON row per (config, impl).

Usage:
    python benchmarks/kernel_ops.py                       # CUDA, DeepSeek-V4-Flash shapes
    python benchmarks/kernel_ops.py --device cuda --quick # CUDA, one or two shapes per section (~30 s on an H200)
    python benchmarks/kernel_ops.py --device cpu --small  # anyone's CPU, small shapes (--quick: fewer of them)

Rows follow ``shared/reference/performance.md`` §4: name, impl, shape, dtype, device, ms_median,
ms_p10, ms_p90, tflops, gbps, pct_peak_flops, pct_peak_bw, max_abs_err_vs_ref (plus a note).
Peaks: 790 TFLOP/s BF16 GEMM and 4300 GB/s on the H200 (performance.md §0); on the CPU the
bandwidth peak is a copy measured in the same run and FLOP percentages are left empty.

Sections: (1) MoE forward+backward: our two fast paths (Triton kernels; sorted ``torch._grouped_mm``) and what
``moe_ffn`` picks between them in auto mode (its timed table, ``kernels/moe/choice.py``), vs the per-expert loop
and one dense GEMM of the same FLOPs; (2) attention prefill: CSA (indexer top-k + sparse MQA over window +
top-k) vs dense causal attention at the same head dim 512 (chunked q·kᵀ / softmax / p·v with bf16 inputs, fp32
softmax: SDPA's fused backends refuse D=512, and its math backend would hold all L² scores), with the ratio on
our row; (3) a decode step at long context, GB/s vs the measured copy bandwidth; (4) mHC added time per block vs a
plain residual add, and the site's GB/s vs the copy bandwidth; (5) Engram retrieval (n-gram hashing + table gather),
forward and forward+backward, GB/s of the gathered rows vs the measured copy bandwidth: ours vs the PyTorch
reference (hash, then ``F.embedding``), and on CUDA the reference reading a table in pinned host memory.
Memory-bound rows carry a note on what would bring them toward 60% of the bandwidth.

On the CPU, "ours" runs through the Triton interpreter (this script sets ``TRITON_INTERPRET=1``
before importing Triton): its error column is meaningful, its time is not (performance.md §2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

_STARTED = time.perf_counter()

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--small", action="store_true", help="small shapes (CPU-sized)")
    p.add_argument("--quick", action="store_true",
                   help="fewer shapes: MoE at 4k and 16k tokens, prefill at 8k and 32k, decode at 32k and 128k, "
                        "one mHC and one Engram shape, no per-expert MoE loop (with --small: the smallest shape of "
                        "each section)")
    p.add_argument("--json", default=None, help="output path (default runs/benchmarks/kernels-<device>.json)")
    p.add_argument("--only", default="moe,prefill,decode,mhc,engram", help="comma-separated sections")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions on CPU (default 5)")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None

import torch  # noqa: E402  (importing torch does not import triton)

if ARGS is not None and (ARGS.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cpu"):
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import
import torch.nn.functional as F  # noqa: E402

from multimodal.backbone.engram import engram_multipliers, engram_primes  # noqa: E402
from multimodal.config import EngramConfig  # noqa: E402
from multimodal.kernels.engram import engram_gather, naive_engram_gather  # noqa: E402
from multimodal.kernels.indexer import indexer_topk  # noqa: E402
from multimodal.kernels.mhc import mhc_post, mhc_pre, naive_mhc_post, naive_mhc_pre  # noqa: E402
from multimodal.kernels.moe import moe_ffn, naive_moe_ffn  # noqa: E402
from multimodal.kernels.moe.choice import CHOICES, choice_key  # noqa: E402
from multimodal.kernels.moe.grouped import grouped_mm_moe_ffn, grouped_mm_unsupported  # noqa: E402
from multimodal.kernels.sparse_attention import sparse_mqa  # noqa: E402

PEAK_TFLOPS = {"cuda": 790.0}  # measured BF16 GEMM on H200 (performance.md §0)
PEAK_GBPS = {"cuda": 4300.0}


# ----------------------------------------------------------------------------------------------- timing
def timeit(fn, device: torch.device, repeats: int) -> list[float]:
    """[median, p10, p90] milliseconds per call, after one untimed warm-up call.

    CUDA: CUDA events, as many calls as fit in ~200 ms (at least 3, at most 50), so multi-second
    baselines (dense attention at 128k) stay affordable. CPU: ``repeats`` perf_counter calls.
    """
    fn()  # warm-up (compilation, autotuning caches, allocator)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        n, spent = 0, 0.0
        while n < 3 or (spent < 200.0 and n < 50):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
            spent += times[-1]
            n += 1
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    pick = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return [statistics.median(times), pick(0.1), pick(0.9)]


def once(fn):
    """(result, [ms]*3) of a single untimed-warm-up call: for the interpreter, whose time is not meaningful."""
    t0 = time.perf_counter()
    out = fn()
    ms = (time.perf_counter() - t0) * 1e3
    return out, [ms, ms, ms]


def row(name, impl, shape, dtype, device, ms, flops=None, bytes_=None, err=None, note="", peak_bw=None):
    """One result row (performance.md §4 keys)."""
    med, p10, p90 = ms
    tflops = flops / (med * 1e-3) / 1e12 if flops else None
    gbps = bytes_ / (med * 1e-3) / 1e9 if bytes_ else None
    pf = PEAK_TFLOPS.get(device.type)
    pb = peak_bw or PEAK_GBPS.get(device.type)
    return dict(name=name, impl=impl, shape=shape, dtype=str(dtype).replace("torch.", ""), device=device.type,
                ms_median=round(med, 4), ms_p10=round(p10, 4), ms_p90=round(p90, 4),
                tflops=None if tflops is None else round(tflops, 3), gbps=None if gbps is None else round(gbps, 2),
                pct_peak_flops=None if (tflops is None or pf is None) else round(100 * tflops / pf, 1),
                pct_peak_bw=None if (gbps is None or pb is None) else round(100 * gbps / pb, 1),
                max_abs_err_vs_ref=None if err is None else float(f"{err:.3g}"), note=note)


def error_row(name, impl, shape, dtype, device, exc: BaseException):
    return dict(name=name, impl=impl, shape=shape, dtype=str(dtype).replace("torch.", ""), device=device.type,
                error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")


def forced(policy: str):
    """Context manager setting MULTIMODAL_KERNELS for one implementation."""
    class _Env:
        def __enter__(self):
            self.prev = os.environ.get("MULTIMODAL_KERNELS")
            os.environ["MULTIMODAL_KERNELS"] = policy

        def __exit__(self, *exc):
            if self.prev is None:
                os.environ.pop("MULTIMODAL_KERNELS", None)
            else:
                os.environ["MULTIMODAL_KERNELS"] = self.prev
    return _Env()


def copy_bandwidth(device: torch.device, mib: int) -> float:
    """GB/s of a plain device copy (read + write), the reference bandwidth of this run."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = timeit(lambda: dst.copy_(src), device, 5)[0]
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------------------------- MoE
def dense_same_flops(x_rows, w1, w3, w2, limit):
    """Ceiling: one dense SwiGLU FFN over the T*k rows with a single expert's weights."""
    g, u = x_rows @ w1.T, x_rows @ w3.T
    if limit is not None:
        g, u = g.clamp(max=limit), u.clamp(-limit, limit)
    return (F.silu(g) * u) @ w2.T


def bench_moe(dev, dtype, small, repeats, rows, quick=False):
    H, I, E, k = (64, 32, 8, 2) if small else (4096, 2048, 256, 6)
    if small:
        token_counts = (32,) if quick else (32, 128)
    else:
        token_counts = (4096, 16384) if quick else (4096, 16384, 65536)
    limit = 10.0
    gen = torch.Generator(device=dev).manual_seed(0)
    w1 = (torch.randn(E, I, H, device=dev, generator=gen) / H**0.5).to(dtype).requires_grad_()
    w3 = (torch.randn(E, I, H, device=dev, generator=gen) / H**0.5).to(dtype).requires_grad_()
    w2 = (torch.randn(E, H, I, device=dev, generator=gen) / I**0.5).to(dtype).requires_grad_()
    interp = dev.type == "cpu"
    for T in token_counts:
        x = torch.randn(T, H, device=dev, generator=gen).to(dtype).requires_grad_()
        indices = torch.rand(T, E, device=dev, generator=gen).topk(k, dim=1).indices
        weights = torch.rand(T, k, device=dev, generator=gen).requires_grad_()
        dout = torch.randn(T, H, device=dev, generator=gen).to(dtype)
        shape = f"T={T} H={H} I={I} E={E} k={k}"
        flops = 18.0 * T * k * H * I  # fwd 6·T·k·H·I, bwd 2x
        with torch.no_grad(), forced("torch"):
            ref = naive_moe_ffn(x, w1, w3, w2, indices, weights, limit).float()

        def fwd_bwd(f):
            def run():
                out = f()
                torch.autograd.grad(out, [x, w1, w3, w2, weights], dout)
                return out
            return run

        unsupported = grouped_mm_unsupported(x, w1, w3, w2, k)
        impls = {  # name: (policy, call, time it with the interpreter's single call)
            "ours: triton" + (" interpreter" if interp else ""):
                ("triton", lambda: moe_ffn(x, w1, w3, w2, indices, weights, limit), interp),
            "ours: sorted torch._grouped_mm": ("auto", lambda: grouped_mm_moe_ffn(x, w1, w3, w2, indices, weights,
                                                                                limit), False),
            "ours (auto choice)": ("auto", lambda: moe_ffn(x, w1, w3, w2, indices, weights, limit), interp),
        }
        if small or not quick:  # at E=256 the loop (a host sync and an fp32 weight copy per expert) takes seconds
            impls["per-expert loop"] = ("torch", lambda: naive_moe_ffn(x, w1, w3, w2, indices, weights, limit), False)
        for impl, (policy, f, single) in impls.items():
            try:
                with forced(policy):
                    if single:
                        out, ms = once(fwd_bwd(f))
                    else:
                        with torch.no_grad():
                            out = f()
                        ms = timeit(fwd_bwd(f), dev, repeats)
                    err = (out.detach().float() - ref).abs().max().item()
                note = "interpreter: time not meaningful" if single else ""
                if "grouped_mm" in impl and unsupported:
                    note = f"moe_ffn would not pick it here: {unsupported}"
                if impl == "ours (auto choice)":
                    note = _auto_note(dev, dtype, T, H, I, E, k) + ("; " + note if note else "")
                rows.append(row("moe_fwd_bwd", impl, shape, dtype, dev, ms, flops, err=err, note=note))
            except Exception as exc:  # a baseline missing on this build is reported, not fatal
                rows.append(error_row("moe_fwd_bwd", impl, shape, dtype, dev, exc))
        x_rows = torch.randn(T * k, H, device=dev, generator=gen).to(dtype).requires_grad_()
        d_rows = torch.randn(T * k, H, device=dev, generator=gen).to(dtype)
        dense_w = [w.detach()[0].clone().requires_grad_() for w in (w1, w3, w2)]

        def dense():
            out = dense_same_flops(x_rows, *dense_w, limit)
            torch.autograd.grad(out, [x_rows, *dense_w], d_rows)
        rows.append(row("moe_fwd_bwd", "dense GEMM, same FLOPs", shape, dtype, dev, timeit(dense, dev, repeats), flops,
                        note="ceiling"))
        del x_rows, d_rows, dense_w


def _auto_note(dev, dtype, T, H, I, E, k) -> str:  # noqa: E741
    """Which path moe_ffn's table holds for this training call, with the in-op timings it decided on."""
    entry = CHOICES.table.get(choice_key(dev, dtype, T, H, I, E, k, True))
    if entry is None:
        return "picked triton (nothing measured on this device)"
    timings = ", ".join(f"{n} {v:.2f} ms" for n, v in entry.ms.items())
    return f"picked {entry.path} ({timings} in its one-time measurement)"


# ----------------------------------------------------------------------------------------------- attention
def csa_indices(topk_idx: torch.Tensor, pos: torch.Tensor, L: int, window: int) -> torch.Tensor:
    """[B, S, window + topk] positions into [raw KV (L) ; compressed KV]: causal window, then top-k.

    topk_idx: [B, S, topk] indexer picks into the compressed entries (-1 = none); pos: [S] positions.
    """
    B, S = topk_idx.shape[:2]
    win = pos[:, None] - torch.arange(window - 1, -1, -1, device=pos.device)[None, :]  # [S, window]
    win = torch.where(win >= 0, win, torch.full_like(win, -1)).expand(B, S, window)
    comp = torch.where(topk_idx >= 0, topk_idx + L, topk_idx)  # compressed entries follow the raw ones
    return torch.cat([win, comp], dim=-1)


def attn_config(small: bool) -> dict:
    if small:
        return dict(H=4, D=64, Hi=4, Di=32, topk=32, window=16, m=4)
    return dict(H=64, D=512, Hi=64, Di=128, topk=512, window=128, m=4)  # DeepSeek-V4-Flash


def csa_inputs(dev, dtype, B, L, S, c, gen):
    """Random q/kv/indexer tensors for S queries at the end of an L-token context."""
    Lc = L // c["m"]
    q = torch.randn(B, S, c["H"], c["D"], device=dev, generator=gen).to(dtype)
    kv = torch.randn(B, L + Lc, c["D"], device=dev, generator=gen).to(dtype)  # raw ; compressed
    qi = torch.randn(B, S, c["Hi"], c["Di"], device=dev, generator=gen).to(dtype)
    ki = torch.randn(B, Lc, c["Di"], device=dev, generator=gen).to(dtype)
    wi = torch.rand(B, S, c["Hi"], device=dev, generator=gen).to(dtype)
    pos = torch.arange(L - S, L, device=dev)
    threshold = ((pos + 1) // c["m"]).expand(B, S).contiguous()  # compressed blocks fully in the past
    sink = torch.zeros(c["H"], device=dev)
    return q, kv, qi, ki, wi, threshold, sink, pos


def csa_forward(q, kv, qi, ki, wi, threshold, sink, pos, c, L):
    top = indexer_topk(qi, ki, wi, threshold, c["topk"], c["Di"] ** -0.5)
    idx = csa_indices(top, pos, L, c["window"])  # [B, S, window + topk]
    return sparse_mqa(q, kv, idx, c["D"] ** -0.5, sink)


def _attn_err(q, kv, qi, ki, wi, thr, sink, pos, c, L, rows: int = 512) -> float:
    """Max |ours - reference| of the sparse attention on the last ``rows`` queries, same indices.

    The selections themselves can differ at exact score ties (ReLU zeros), so the reference's
    indices are used for both; the subset keeps the reference's gathered [rows, K, D] tensor small.
    """
    sl = slice(max(0, q.shape[1] - rows), q.shape[1])
    with torch.no_grad(), forced("torch"):
        top = indexer_topk(qi[:, sl], ki, wi[:, sl], thr[:, sl], c["topk"], c["Di"] ** -0.5)
        idx = csa_indices(top, pos[sl], L, c["window"])
        ref = sparse_mqa(q[:, sl], kv, idx, c["D"] ** -0.5, sink).float()
    with torch.no_grad(), forced("triton"):
        return (sparse_mqa(q[:, sl], kv, idx, c["D"] ** -0.5, sink).float() - ref).abs().max().item()


def dense_causal_chunked(q: torch.Tensor, kv: torch.Tensor, scale: float, chunk: int) -> torch.Tensor:
    """Dense causal attention with one shared KV head at any head dim: q [B, S, H, D] over kv [B, S, D] (K = V).

    Query chunks of ``chunk`` rows: scores q·kᵀ for the keys up to the chunk's end only (the causal half, as a
    fused kernel would skip), GEMMs in the input dtype with fp32 accumulation, softmax in fp32, then p·v. The
    H heads of a chunk share the one KV head, so they are one [H·chunk, D] x [D, keys] GEMM: nothing expands KV.
    """
    B, S, H, D = q.shape
    out = torch.empty_like(q)
    for c0 in range(0, S, chunk):
        c1 = min(S, c0 + chunk)
        qc = q[:, c0:c1].transpose(1, 2).reshape(B, H * (c1 - c0), D)  # [B, H*C, D]
        kc = kv[:, :c1]  # [B, c1, D] keys (= values) visible to this chunk
        scores = torch.bmm(qc, kc.transpose(1, 2)).float().mul_(scale).view(B, H, c1 - c0, c1)  # [B, H, C, c1]
        pos = torch.arange(c0, c1, device=q.device)
        scores.masked_fill_(pos[:, None] < torch.arange(c1, device=q.device)[None, :], float("-inf"))
        p = torch.softmax(scores, dim=-1).to(q.dtype).view(B, H * (c1 - c0), c1)
        out[:, c0:c1] = torch.bmm(p, kc).view(B, H, c1 - c0, D).transpose(1, 2)  # [B, C, H, D]
        del scores, p
    return out


def bench_prefill(dev, dtype, small, repeats, rows, quick=False):
    c = attn_config(small)
    B = 1
    if small:
        lengths = (128,) if quick else (128, 512)
    else:
        lengths = (8192, 32768) if quick else (8192, 32768, 131072)
    for L in lengths:
        gen = torch.Generator(device=dev).manual_seed(1)
        inputs = csa_inputs(dev, dtype, B, L, L, c, gen)
        q, kv = inputs[:2]
        K = c["window"] + c["topk"]
        shape = f"L={L} H={c['H']} D={c['D']} K={K} Hi={c['Hi']}x{c['Di']}"
        flops_csa = 4.0 * L * K * c["D"] * c["H"] + 2.0 * L * (L // c["m"]) / 2 * c["Hi"] * c["Di"]
        interp = dev.type == "cpu"
        impl = "CSA: ours (indexer top-k + sparse MQA)" + (" interpreter" if interp else "")
        run = lambda: csa_forward(*inputs, c, L)  # noqa: E731
        try:
            err = _attn_err(*inputs, c, L)
            with torch.no_grad(), forced("triton"):
                ms = once(run)[1] if interp else timeit(run, dev, repeats)
            ours = row("attn_prefill", impl, shape, dtype, dev, ms, flops_csa, err=err,
                       note="interpreter: time not meaningful" if interp else "fwd only")
            rows.append(ours)
        except Exception as exc:
            ours = None
            rows.append(error_row("attn_prefill", impl, shape, dtype, dev, exc))
        if not (quick and L > 8192):  # the reference gathers [L, K, D] fp32 at once: one size is enough
            try:
                with torch.no_grad(), forced("torch"):
                    ms = timeit(run, dev, repeats)
                rows.append(row("attn_prefill", "CSA: PyTorch reference ops", shape, dtype, dev, ms, flops_csa))
            except torch.OutOfMemoryError as exc:
                rows.append(error_row("attn_prefill", "CSA: PyTorch reference ops", shape, dtype, dev, exc))
                torch.cuda.empty_cache()
        flops_dense = 4.0 * L * L * c["D"] * c["H"] / 2
        # dense causal at D=512 with one KV head: query chunks sized so one fp32 score block stays near 2 GiB
        chunk = max(16, min(L, (2**31 // (4 * c["H"] * L)) // 16 * 16))
        name = f"dense causal, chunked math (bf16 GEMMs, fp32 softmax, {chunk}-query chunks)"
        try:
            with torch.no_grad():
                dense_ms = timeit(lambda: dense_causal_chunked(q, kv[:, :L], c["D"] ** -0.5, chunk), dev, repeats)
            rows.append(row("attn_prefill", name, shape, dtype, dev, dense_ms, flops_dense,
                            note="the dense baseline at our head dim (SDPA's fused kernels refuse D=512)"))
            if ours is not None and not interp:
                ours["speedup_vs_dense"] = round(dense_ms[0] / ours["ms_median"], 2)
                ours["note"] = f"fwd only; {ours['speedup_vs_dense']}x the dense causal baseline's speed"
        except Exception as exc:
            rows.append(error_row("attn_prefill", name, shape, dtype, dev, exc))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if quick:
            continue
        qd = q.transpose(1, 2)  # [B, H, L, D]
        kd = kv[:, None, :L]  # [B, 1, L, D] one shared KV head
        backends = [None]
        if dev.type == "cuda":
            from torch.nn.attention import SDPBackend
            backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        for be in backends:
            name = "dense causal SDPA" + ("" if be is None else f" [{be.name}]")
            try:
                def dense():
                    if be is None:
                        return F.scaled_dot_product_attention(qd, kd, kd, is_causal=True, enable_gqa=True)
                    from torch.nn.attention import sdpa_kernel
                    with sdpa_kernel([be]):
                        return F.scaled_dot_product_attention(qd, kd, kd, is_causal=True, enable_gqa=True)
                with torch.no_grad():
                    rows.append(row("attn_prefill", name, shape, dtype, dev, timeit(dense, dev, repeats), flops_dense))
            except Exception as exc:
                rows.append(error_row("attn_prefill", name, shape, dtype, dev, exc))


DECODE_NOTE = ("toward 60%: the step is several small launches (indexer scores, torch.topk over an fp32 score row "
               "written to and read back from HBM, index building, sparse attention + combine); fuse a per-block "
               "partial top-k into the score kernel and merge, build the window+top-k list on the device in that "
               "kernel, and CUDA-graph the step; at B=1 give each sequence more CTAs (the score kernel tiles 32 "
               "query rows per program for one query)")


def bench_decode(dev, dtype, small, repeats, rows, copy_gbps, quick=False):
    c = attn_config(small)
    if small:
        contexts, batches = (4096,), ((1,) if quick else (1, 4))
    else:
        contexts, batches = ((32768, 131072) if quick else (131072,)), (1, 32)
    for L, B in [(L, B) for L in contexts for B in batches]:
        gen = torch.Generator(device=dev).manual_seed(2)
        inputs = csa_inputs(dev, dtype, B, L, 1, c, gen)
        q, kv, qi, ki = inputs[:4]
        K = c["window"] + c["topk"]
        esz = q.element_size()
        # bytes touched: indexer keys + queries, gathered KV entries, attention queries and output
        bytes_ = B * (ki.shape[1] * c["Di"] + c["Hi"] * c["Di"] + K * c["D"] + 2 * c["H"] * c["D"]) * esz
        shape = f"B={B} context={L} K={K} H={c['H']} D={c['D']}"
        run = lambda: csa_forward(*inputs, c, L)  # noqa: E731
        err = _attn_err(*inputs, c, L)
        interp = dev.type == "cpu"
        for impl, policy in (("CSA decode: ours", "triton"), ("CSA decode: PyTorch reference ops", "torch")):
            mine = policy == "triton"
            with torch.no_grad(), forced(policy):
                ms = once(run)[1] if (mine and interp) else timeit(run, dev, repeats)
            note = f"pct_peak_bw vs measured copy {copy_gbps:.0f} GB/s" + (f"; {DECODE_NOTE}" if mine else "")
            rows.append(row("attn_decode", impl + (" interpreter" if mine and interp else ""), shape, dtype, dev, ms,
                            bytes_=bytes_, peak_bw=copy_gbps, err=err if mine else None,
                            note=note + ("; interpreter: time not meaningful" if mine and interp else "")))


# ----------------------------------------------------------------------------------------------- mHC
MHC_NOTE = ("toward 60%: larger BT per program to amortise the fn [(2+n)n, nD] loads over more tokens, and fuse "
            "one site's mhc_post with the next site's mhc_pre (one pass over the n streams instead of two; the "
            "forward of mhc_pre also reads X twice: norm+projection, then collapse)")


def bench_mhc(dev, dtype, small, repeats, rows, copy_gbps=None, quick=False):
    n, D = (4, 128) if small else (4, 4096)
    for T in ((256,) if small else ((4096,) if quick else (4096, 16384))):
        gen = torch.Generator(device=dev).manual_seed(3)
        W = (2 + n) * n
        streams = torch.randn(1, T, n, D, device=dev, generator=gen).to(dtype).requires_grad_()
        fn = (torch.randn(W, n * D, device=dev, generator=gen) * 0.01).requires_grad_()
        base = torch.zeros(W, device=dev, requires_grad=True)
        scale = torch.full((3,), 0.01, device=dev, requires_grad=True)
        block_out = torch.randn(1, T, D, device=dev, generator=gen).to(dtype).requires_grad_()
        dnew = torch.randn(1, T, n, D, device=dev, generator=gen).to(dtype)
        shape = f"T={T} n={n} D={D} sinkhorn=20"
        bytes_ = (3 * n * D + 2 * D) * T * streams.element_size()  # pre reads X twice, writes u; post reads X, F, writes X'
        with torch.no_grad():
            post_r, comb_r, coll_r = naive_mhc_pre(streams, fn, base, scale, 20, 1e-6, 1e-6)
            ref = naive_mhc_post(coll_r + block_out, streams, post_r, comb_r).float()

        def site(pre_fn, post_fn, backward):
            def run():
                post, comb, collapsed = pre_fn(streams, fn, base, scale, 20, 1e-6, 1e-6)
                new = post_fn(collapsed + block_out, streams, post, comb)  # stand-in block: F(u) = u + out
                if backward:
                    torch.autograd.grad(new, [streams, fn, base, scale, block_out], dnew)
                return new
            return run

        for impl, policy, pre_fn, post_fn in (("ours", "triton", mhc_pre, mhc_post),
                                              ("PyTorch reference (unfused)", "torch", naive_mhc_pre, naive_mhc_post)):
            if policy == "triton" and dev.type == "cpu":
                impl += " (triton interpreter)"
            interp = policy == "triton" and dev.type == "cpu"
            for backward in (False, True):
                with forced(policy):
                    with torch.no_grad():
                        err = (site(pre_fn, post_fn, False)().float() - ref).abs().max().item()
                    fn_ = site(pre_fn, post_fn, backward)
                    ms = once(fn_)[1] if interp else timeit(fn_, dev, repeats)
                note = "" if backward else f"pct_peak_bw vs measured copy {copy_gbps:.0f} GB/s" if copy_gbps else ""
                if policy == "triton" and not backward:
                    note += ("; " if note else "") + MHC_NOTE
                if interp:
                    note = "interpreter: time not meaningful"
                rows.append(row("mhc_site_fwd_bwd" if backward else "mhc_site_fwd", impl, shape, dtype, dev, ms,
                                bytes_=None if backward else bytes_, err=err, note=note,
                                peak_bw=None if backward else copy_gbps))

        def residual(backward):
            def run():
                new = streams + block_out[:, :, None]
                if backward:
                    torch.autograd.grad(new, [streams, block_out], dnew)
            return run
        site_rows = rows[-4:]  # ours fwd, ours fwd+bwd, reference fwd, reference fwd+bwd
        for backward in (False, True):
            rows.append(row("mhc_site_fwd_bwd" if backward else "mhc_site_fwd", "plain residual add (n streams)",
                            shape, dtype, dev, timeit(residual(backward), dev, repeats), note="baseline"))
        base_fwd, base_fb = rows[-2]["ms_median"], rows[-1]["ms_median"]
        for fwd, fb in (site_rows[0:2], site_rows[2:4]):
            # a V4 block has two mHC sites (attention, FFN); "added" is over a plain residual add
            rows.append(dict(name="mhc_added_per_block", impl=fwd["impl"], shape=shape, device=dev.type,
                             added_ms_fwd=round(2 * (fwd["ms_median"] - base_fwd), 4),
                             added_ms_fwd_bwd=round(2 * (fb["ms_median"] - base_fb), 4)))


# ----------------------------------------------------------------------------------------------- Engram
def bench_engram(dev, dtype, small, repeats, rows, copy_gbps, quick=False):
    # N = 3, K = 8, d_mem = 1024 (head_dim 64), tables of 65537+ rows per head: the EngramConfig defaults
    N, K, d_mem, table_size = (3, 2, 64, 1009) if small else (3, 8, 1024, 65537)
    vocab = 129280  # DeepSeek-V3/V4 vocabulary
    cfg = EngramConfig(layers=[0], max_ngram=N, n_heads=K, table_size=table_size, d_mem=d_mem)
    primes = torch.tensor(engram_primes(cfg)[0], device=dev)  # [N-1, K]
    flat = primes.flatten()
    offsets = torch.cumsum(flat, 0) - flat
    mult = torch.from_numpy(engram_multipliers(cfg, 0, vocab)).to(dev)
    H, Dh = (N - 1) * K, d_mem // ((N - 1) * K)
    gen = torch.Generator(device=dev).manual_seed(4)
    table = (torch.randn(int(flat.sum()), Dh, device=dev, generator=gen) * 0.02).to(dtype).requires_grad_()
    for T in ((256,) if small else ((16384,) if quick else (1024, 16384))):
        ids = torch.randint(0, vocab, (1, T), device=dev, generator=gen)
        hist = torch.randint(0, vocab, (1, N - 1), device=dev, generator=gen)
        args = (ids, hist, mult, primes, offsets, table)
        dout = torch.randn(1, T, H * Dh, device=dev, generator=gen).to(dtype)
        shape = f"T={T} N={N} K={K} head_dim={Dh} table_rows={table.shape[0]}"
        bytes_ = T * H * Dh * table.element_size() * 2 + T * 8  # rows read + output written, ids read
        with torch.no_grad():
            ref = naive_engram_gather(*args).float()

        def call(f, backward):
            def run():
                out = f(*args)
                if backward:
                    torch.autograd.grad(out, [table], dout)
                return out
            return run

        for impl, policy, f in (("ours (fused hash + gather)", "triton", engram_gather),
                                ("PyTorch reference (hash, then F.embedding)", "torch", naive_engram_gather)):
            interp = policy == "triton" and dev.type == "cpu"
            if interp:
                impl += " (triton interpreter)"
            for backward in (False, True):
                try:
                    with forced(policy):
                        with torch.no_grad():
                            err = (f(*args).float() - ref).abs().max().item()
                        ms = once(call(f, backward))[1] if interp else timeit(call(f, backward), dev, repeats)
                    note = f"pct_peak_bw vs measured copy {copy_gbps:.0f} GB/s" if not backward else ""
                    if interp:
                        note = "interpreter: time not meaningful"
                    rows.append(row("engram_fwd_bwd" if backward else "engram_fwd", impl, shape, dtype, dev, ms,
                                    bytes_=None if backward else bytes_, err=err, note=note,
                                    peak_bw=None if backward else copy_gbps))
                except Exception as exc:
                    rows.append(error_row("engram_fwd_bwd" if backward else "engram_fwd", impl, shape, dtype, dev,
                                          exc))
        if dev.type == "cuda":  # the paper's placement: table in host DRAM, only the gathered rows cross PCIe
            impl = "reference on a pinned host table, rows copied to the GPU"
            try:
                host = [t.detach().cpu() for t in args[:5]] + [table.detach().cpu().pin_memory()]

                def from_host():
                    ids_h = ids.cpu()  # the ids are known before the layer runs
                    return naive_engram_gather(ids_h, *host[1:]).pin_memory().to(dev, non_blocking=True)
                with torch.no_grad():
                    err = (from_host().float() - ref).abs().max().item()
                    ms = timeit(from_host, dev, repeats)
                rows.append(row("engram_fwd", impl, shape, dtype, dev, ms, bytes_=bytes_, err=err,
                                note="no side-stream overlap: upper bound of the exposed cost"))
            except Exception as exc:
                rows.append(error_row("engram_fwd", impl, shape, dtype, dev, exc))


# ----------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> list[dict]:
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    small = args.small or dev.type == "cpu"
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # the interpreter has no bf16 arithmetic
    repeats = args.repeats or 5
    sections = set(args.only.split(","))
    copy_gbps = copy_bandwidth(dev, 64 if small else 1024)
    rows: list[dict] = [dict(name="copy_bandwidth", impl="tensor.copy_", device=dev.type, gbps=round(copy_gbps, 1))]
    quick = args.quick
    t0 = time.perf_counter()
    startup = t0 - _STARTED  # imports (torch, multimodal and what it pulls in), device start, copy bandwidth
    if "moe" in sections:
        bench_moe(dev, dtype, small, repeats, rows, quick)
    if "prefill" in sections:
        bench_prefill(dev, dtype, small, repeats, rows, quick)
    if "decode" in sections:
        bench_decode(dev, dtype, small, repeats, rows, copy_gbps, quick)
    if "mhc" in sections:
        bench_mhc(dev, dtype, small, repeats, rows, copy_gbps, quick)
    if "engram" in sections:
        bench_engram(dev, dtype, small, repeats, rows, copy_gbps, quick)
    tag = ("-small" if small else "") + ("-quick" if quick else "")
    out = Path(args.json or ROOT / "runs" / "benchmarks" / f"kernels-{dev.type}{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                threads=torch.get_num_threads(), small=small, quick=quick,
                seconds=round(time.perf_counter() - t0, 1), startup_seconds=round(startup, 1),
                moe_choice_table=CHOICES.format())
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    _print_table(rows)
    print(f"\nmoe_ffn kernel choices (auto mode):\n{CHOICES.format()}")
    print(f"\n{meta['seconds']} s of benchmarks after {meta['startup_seconds']} s of start-up; wrote {out}")
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = ["name", "impl", "shape", "ms_median", "ms_p10", "tflops", "gbps", "pct_peak_flops", "pct_peak_bw",
            "max_abs_err_vs_ref", "note"]
    print(" | ".join(cols))
    for r in rows:
        if r["name"] == "mhc_added_per_block":
            print(f"{r['name']} | {r['impl']} | {r['shape']} | fwd +{r['added_ms_fwd']} ms, "
                  f"fwd+bwd +{r['added_ms_fwd_bwd']} ms")
        elif "error" in r:
            print(f"{r['name']} | {r['impl']} | {r.get('shape', '')} | ERROR {r['error']}")
        else:
            print(" | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols))


if __name__ == "__main__":
    main(ARGS)
