"""Benchmark of the causal 3D autoencoder: encode/decode throughput and peak memory of long clips.

Writes JSON (stdout, or ``--out FILE``)::

    python benchmarks/autoencoder.py --out runs/bench_autoencoder.json

- throughput: frames per second of encode and decode, for a batch of images and for 17-frame videos,
  on CPU (``--threads``) and on CUDA when present;
- memory: peak resident memory added by encoding + decoding one 257-frame 64x64 clip, whole vs in
  chunks (each in a fresh subprocess: the kernel's peak-RSS mark is reset after the model and the
  input clip are loaded, then read after the run), and ``torch.cuda.max_memory_allocated`` on CUDA.

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from multimodal.tokenizers.autoencoder import CausalAutoencoder


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def throughput(model: CausalAutoencoder, device: str, repeats: int) -> dict:
    out = {}
    for name, shape in (("images_b16", (16, 3, 1, 64, 64)), ("videos_b2x17", (2, 3, 17, 64, 64))):
        x = torch.rand(shape, device=device) * 2 - 1
        frames = shape[0] * shape[2]
        z = model.encode(x)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        t_enc = _time(lambda: (model.encode(x), sync()), repeats)
        t_dec = _time(lambda: (model.decode(z), sync()), repeats)
        out[name] = {"encode_frames_per_s": round(frames / t_enc, 1), "decode_frames_per_s": round(frames / t_dec, 1)}
    return out


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_child(chunk: int, frames: int, device: str) -> dict:
    """Run in a subprocess: peak memory of encode + decode of one clip."""
    torch.set_num_threads(2)
    model = CausalAutoencoder.from_pretrained(device=device)
    x = torch.rand(1, 3, frames, 64, 64, device=device) * 2 - 1
    with torch.no_grad():  # warm-up on one frame: allocator and kernels initialised outside the measure
        model.decode(model.encode(x[:, :, :1]))
    exact = _reset_peak_rss()
    base = _status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with torch.no_grad():
        z = model.encode(x, chunk_frames=chunk or None)
        y = model.decode(z, chunk_frames=chunk or None)
    seconds = time.perf_counter() - start
    out = {
        "chunk_frames": chunk or "whole clip",
        "frames": frames,
        "latent_shape": list(z.shape),
        "output_shape": list(y.shape),
        "seconds": round(seconds, 2),
        "input_clip_MiB": round(x.numel() * 4 / 2**20, 1),
    }
    if device.startswith("cuda"):
        out["cuda_peak_MiB_over_input"] = round((torch.cuda.max_memory_allocated() - base_cuda) / 2**20, 1)
    else:
        peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss_growth_MiB"] = round((peak - base) / 1024, 1)
        out["measure"] = "VmHWM after clear_refs" if exact else "ru_maxrss (includes loading)"
    return out


def memory(device: str, frames: int, chunks: list[int]) -> list[dict]:
    results = []
    for chunk in chunks:
        code = f"import json, benchmarks.autoencoder as b; print(json.dumps(b._memory_child({chunk}, {frames}, {device!r})))"
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # so the child finds benchmarks/
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=257)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 32, 16, 4])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    model = CausalAutoencoder.from_pretrained()
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_threads": args.threads,
                    "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "model": {"parameters": sum(p.numel() for p in model.parameters()), "config": model.config.to_dict()},
    }
    for device in devices:
        report[device] = {
            "throughput": throughput(model.to(device), device, args.repeats),
            f"memory_{args.frames}_frames_64x64": memory(device, args.frames, args.chunks),
        }
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
