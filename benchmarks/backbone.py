"""Backbone speed, side by side: ours vs transformers' DeepseekV4ForCausalLM on the same config and weights.

Measures prefill tokens/s, decode tokens/s (one token per step with the caches) and peak memory, on the CPU (the
`tiny` preset by default) and on CUDA when present. Each (implementation, device) runs in its own process so peak
memory is its own. Prints a table and writes JSON.

    python benchmarks/backbone.py --preset tiny --batch 4 --prompt 256 --new 64 --out benchmarks/results/backbone.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _load(impl: str, path: str, device: str):
    if impl == "ours":
        from multimodal.convert.checkpoint import load_pretrained
        return load_pretrained(path, device=device)
    import transformers
    return transformers.DeepseekV4ForCausalLM.from_pretrained(path).to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def measure(impl: str, path: str, device: str, batch: int, prompt: int, new: int, repeats: int) -> dict:
    """Runs in a child process: load, warm up, then time prefill and decode."""
    model = _load(impl, path, device)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, prompt), generator=torch.Generator().manual_seed(0)).to(device)

    def prefill():
        if impl == "ours":
            cache = model.new_cache()
            logits = model(ids, cache=cache, logits_to_keep=1).logits
        else:
            import transformers
            cache = transformers.DynamicCache(config=model.config)
            logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
        return logits[:, -1], cache

    def decode(logits, cache):
        for _ in range(new):
            tok = logits.argmax(-1, keepdim=True)
            if impl == "ours":
                logits = model(tok, cache=cache).logits[:, -1]
            else:
                logits = model(input_ids=tok, cache=cache, use_cache=True).logits[:, -1]
        return logits

    decode(*prefill())                      # warm-up (allocator, kernels)
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t_pre = t_dec = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits, cache = prefill()
        _sync(device)
        t1 = time.perf_counter()
        decode(logits, cache)
        _sync(device)
        t_pre += t1 - t0
        t_dec += time.perf_counter() - t1
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"impl": impl, "device": device, "prefill_tokens_per_s": repeats * batch * prompt / t_pre,
            "decode_tokens_per_s": repeats * batch * new / t_dec, "peak_memory_mb": peak / 2 ** 20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/backbone.json")
    p.add_argument("--child", nargs=2, metavar=("IMPL", "DEVICE"), help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child[0], args.path, args.child[1], args.batch, args.prompt, args.new,
                                 args.repeats)))
        return

    from multimodal.backbone.transformer import Transformer
    from multimodal.config import preset
    from multimodal.convert.checkpoint import save_pretrained

    torch.manual_seed(0)
    model = Transformer(preset(args.preset).replace(num_nextn_predict_layers=0))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        for device in devices:
            for impl in ("transformers", "ours"):
                cmd = [sys.executable, __file__, "--child", impl, device, "--path", tmp, "--batch", str(args.batch),
                       "--prompt", str(args.prompt), "--new", str(args.new), "--repeats", str(args.repeats),
                       "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'device':6s} {'impl':13s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'peak MB':>9s}")
    for r in rows:
        print(f"{r['device']:6s} {r['impl']:13s} {r['prefill_tokens_per_s']:14.0f} {r['decode_tokens_per_s']:13.1f} "
              f"{r['peak_memory_mb']:9.0f}")
    ratios = {}
    for device in devices:
        ref, ours = (next(r for r in rows if r["device"] == device and r["impl"] == i) for i in ("transformers", "ours"))
        ratios[device] = {k: ours[k] / ref[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s")}
        print(f"{device}: ours / transformers  prefill x{ratios[device]['prefill_tokens_per_s']:.2f}  "
              f"decode x{ratios[device]['decode_tokens_per_s']:.2f}")
    result = {"preset": args.preset, "batch": args.batch, "prompt": args.prompt, "new_tokens": args.new,
              "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "torch": torch.__version__, "rows": rows, "ratios": ratios}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
