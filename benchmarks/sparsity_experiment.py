"""A small, rerunnable language-model experiment for the sparsity building blocks (docs/sparsity.md).

Corpus: the Python standard library's own source files on this machine (`sysconfig.get_paths()["stdlib"]`, tests
excluded), read as bytes (vocabulary 256); every 10th file (sorted by path) is held out for validation. Four
byte-level models (2 blocks, width 64, 4 heads, context 128) at (nearly) equal total parameter count are trained
for the same number of steps on the same batches:

    base      mHC (2 streams), MoE (8 routed experts of width 96 + 1 shared, top-2), dense causal attention (the V4
              sliding-window layer with the window covering the whole context)
    plain     as base, with plain residual connections instead of mHC (1% fewer parameters: no mHC coefficients)
    engram    as base, with 2 of the 8 routed experts per block removed and their parameters moved into an Engram
              memory at block 1 (table size: the largest prime that keeps the total <= base)
    csa       as base, with V4 Compressed Sparse Attention (window 16, compression 4, top-8 compressed entries);
              its compressor and indexer parameters are paid for by narrower experts (width 88)

Training uses the package's own optimiser split (training/optimizer.py: Muon for hidden matrices, stacked experts
per matrix, AdamW elsewhere, Engram tables at 5x lr, no decay), the aux-loss-free bias update after every step, a
linear warm-up and cosine decay. The script reports validation loss (nats per byte, on a fixed held-out set) and
training throughput (tokens/s), and writes
`benchmarks/results/sparsity_experiment.json` and the figure `docs/sparsity_loss.svg`.

Run from the repository root (about 9 minutes on one shared CPU core for two seeds):

    PYTHONPATH=. nice -n 10 python benchmarks/sparsity_experiment.py

One torch thread is the default: on a shared 2-core machine two threads ran ~30x slower (oversubscription).
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from multimodal.backbone.transformer import Transformer
from multimodal.config import (AttentionConfig, BackboneConfig, EngramConfig, HyperConfig, MoEConfig, RopeScaling,
                               is_prime)
from multimodal.training.balance import update_router_biases_
from multimodal.training.optimizer import build_optimizer

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------- data
def load_corpus(max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train / validation byte streams from the standard library's .py files (every 10th file -> validation)."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    files = [f for f in files if "site-packages" not in f.parts and "test" not in f.parts]
    train, val = bytearray(), bytearray()
    for i, f in enumerate(files):
        data = f.read_bytes()
        (val if i % 10 == 0 else train).extend(data + b"\n")
        if len(train) >= max_bytes and len(val) >= max_bytes // 8:
            break
    return (torch.tensor(list(train[:max_bytes]), dtype=torch.long),
            torch.tensor(list(val[: max_bytes // 8]), dtype=torch.long))


def batches(stream: torch.Tensor, batch: int, seq: int, steps: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, stream.numel() - seq - 1, (steps, batch), generator=g)
    return [torch.stack([stream[s:s + seq + 1] for s in row.tolist()]) for row in starts]


# ----------------------------------------------------------------------------------------------------- models
def config(name: str, seq: int, table_size: int | None = None) -> BackboneConfig:
    layers, dim = 2, 64
    attn = "compressed_sparse_attention" if name == "csa" else "sliding_attention"
    return BackboneConfig(
        vocab_size=256, hidden_size=dim, num_hidden_layers=layers, layer_types=[attn] * layers,
        mlp_layer_types=["moe"] * layers, max_position_embeddings=4 * seq, num_nextn_predict_layers=0,
        bos_token_id=None, eos_token_id=None,
        attention=AttentionConfig(
            num_attention_heads=4, head_dim=32, q_lora_rank=32, qk_rope_head_dim=16, o_groups=2, o_lora_rank=32,
            sliding_window=16 if name == "csa" else seq, compress_rate_csa=4, compress_rate_hca=16,
            index_n_heads=2, index_head_dim=16, index_topk=8,
            rope_scaling=RopeScaling(factor=1.0, original_max_position_embeddings=seq, attention_factor=1.0)),
        moe=MoEConfig(n_routed_experts=6 if name == "engram" else 8, n_shared_experts=1, num_experts_per_tok=2,
                      moe_intermediate_size=88 if name == "csa" else 96, scoring_func="sqrtsoftplus", routed_scaling_factor=1.5,
                      swiglu_limit=10.0, bias_update_speed=1e-3),
        hyper=HyperConfig(enabled=name != "plain", hc_mult=2 if name != "plain" else 1, hc_sinkhorn_iters=10),
        engram=EngramConfig(layers=[1], max_ngram=3, n_heads=4, table_size=table_size, d_mem=64, seed=0)
        if name == "engram" else EngramConfig(layers=[], table_size=65537))


def n_params(cfg: BackboneConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Transformer(cfg).parameters())


def engram_table_size(seq: int) -> int:
    """The largest prime table size keeping the Engram model's total parameters <= the base model's."""
    budget = n_params(config("base", seq))
    lo, hi = 2, 1 << 20
    while hi - lo > 1:
        mid = (lo + hi) // 2
        p = mid
        while not is_prime(p):
            p += 1
        (lo, hi) = (mid, hi) if n_params(config("engram", seq, p)) <= budget else (lo, mid)
    p = lo
    while not is_prime(p) or n_params(config("engram", seq, p)) > budget:
        p -= 1
    return p


# --------------------------------------------------------------------------------------------------- training
def lm_loss(model: Transformer, chunk: torch.Tensor) -> torch.Tensor:
    logits = model(chunk[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten())


@torch.no_grad()
def evaluate(model: Transformer, val: list[torch.Tensor]) -> float:
    model.eval()
    loss = sum(lm_loss(model, c).item() for c in val) / len(val)
    model.train()
    return loss


def train(name: str, cfg: BackboneConfig, data: list[torch.Tensor], val: list[torch.Tensor], lr: float,
          eval_every: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = Transformer(cfg).train()
    opt = build_optimizer(model, lr=lr, weight_decay=0.1)
    base_lrs = [g["lr"] for g in opt.param_groups]
    steps, warm = len(data), max(1, len(data) // 20)
    curve, tokens, busy = [], 0, 0.0
    for step, chunk in enumerate(data):
        scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * scale
        t0 = time.perf_counter()
        loss = lm_loss(model, chunk)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_router_biases_(model)
        busy += time.perf_counter() - t0
        tokens += chunk[:, :-1].numel()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append((step + 1, evaluate(model, val)))
            print(f"{name:7s} seed {seed} step {step + 1:4d}  train {loss.item():.3f}  val {curve[-1][1]:.3f}  "
                  f"{tokens / busy:7.0f} tok/s", flush=True)
    return {"name": name, "seed": seed, "params": sum(p.numel() for p in model.parameters()),
            "val_loss": curve[-1][1], "tokens_per_s": tokens / busy, "curve": curve, "train_seconds": busy}


# ------------------------------------------------------------------------------------------------------ figure
def svg_figure(results: list[dict], path: Path) -> None:
    """Validation loss against step for every run, as a dependency-free SVG line chart."""
    w, h, pad = 640, 360, 56
    pts = [(s, v) for r in results for s, v in r["curve"]]
    x_max = max(s for s, _ in pts)
    y_lo, y_hi = min(v for _, v in pts), max(v for _, v in pts)
    y_lo, y_hi = y_lo - 0.05 * (y_hi - y_lo), y_hi + 0.05 * (y_hi - y_lo)

    def xy(s: float, v: float) -> tuple[float, float]:
        return pad + (w - 2 * pad) * s / x_max, h - pad - (h - 2 * pad) * (v - y_lo) / (y_hi - y_lo)

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
           f'<text x="{w / 2}" y="{h - 16}" text-anchor="middle">training step</text>',
           f'<text x="16" y="{h / 2}" transform="rotate(-90 16 {h / 2})" text-anchor="middle">'
           f'validation loss (nats / byte)</text>']
    for i in range(5):
        v = y_lo + (y_hi - y_lo) * i / 4
        _, y = xy(0, v)
        out.append(f'<text x="{pad - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        s = x_max * i / 4
        x, _ = xy(s, y_lo)
        out.append(f'<text x="{x:.1f}" y="{h - pad + 16}" text-anchor="middle">{s:.0f}</text>')
    for i, r in enumerate(results):
        c = colors[i % len(colors)]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, v) for s, v in r["curve"]))
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{line}"/>')
        out.append(f'<text x="{w - pad - 150}" y="{pad + 16 * i}" fill="{c}">{r["name"]}: '
                   f'{r["val_loss"]:.3f}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="base,plain,engram,csa")
    ap.add_argument("--seeds", default="0,1", help="model-init and data-order seeds, one full set of runs each")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sparsity_experiment.json")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "sparsity_loss.svg")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_stream, val_stream = load_corpus(max_bytes=2_000_000)
    val = batches(val_stream, 16, args.seq, 8, seed=2)
    table = engram_table_size(args.seq)
    print(f"corpus: {train_stream.numel()} train bytes, {val_stream.numel()} validation bytes; "
          f"engram table size {table}", flush=True)
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = batches(train_stream, args.batch, args.seq, args.steps, seed=1 + seed)
        for name in args.runs.split(","):
            cfg = config(name, args.seq, table if name == "engram" else None)
            results.append(train(name, cfg, data, val, args.lr, eval_every=max(1, args.steps // 6), seed=seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": args.lr, "threads": args.threads,
            "train_bytes": train_stream.numel(), "val_bytes": val_stream.numel(), "engram_table_size": table,
            "torch": torch.__version__}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    svg_figure([r for r in results if r["seed"] == results[0]["seed"]], args.figure)
    print("\n| run | total params | val loss (nats/byte), per seed | mean | train tokens/s (mean) |\n"
          "|---|---|---|---|---|")
    for name in args.runs.split(","):
        rs = [r for r in results if r["name"] == name]
        losses = [r["val_loss"] for r in rs]
        print(f"| {name} | {rs[0]['params']:,} | {' / '.join(f'{v:.3f}' for v in losses)} | "
              f"{sum(losses) / len(losses):.3f} | {sum(r['tokens_per_s'] for r in rs) / len(rs):.0f} |")


if __name__ == "__main__":
    main()
