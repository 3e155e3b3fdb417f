"""Where digit reading is lost: the autoencoder's latents against probes trained on them (docs/quality.md, "What
the captions get wrong").

    python benchmarks/digit_probe.py --threads 1          # ~2 min on one core; JSON: benchmarks/results/digit_probe.json

1. **Reconstructions.** The world's scorer reads the autoencoder's reconstructions of the first `--images`
   validation images (a digit's glyph is a held-out test glyph there): if the digit survives encoding, it passes.
2. **Probes.** The single-digit images among the first `--train-items` training items are encoded once; three
   classifiers of the digit (0-9) are trained on their latents [16, 8, 8] alone (AdamW 1e-3, `--epochs`, batch 128,
   seed 0) and scored on the single-digit validation images: a linear map of the whole grid, a two-layer MLP of it,
   and two 3 x 3 convolutions then a max over positions (what `VisualStem` adds to the model). A probe that reads the
   unseen glyphs says the information is in the latents; the gap between the MLP and the convolution says what an
   architecture needs to get it out from few examples.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.data.render import render_sample
from multimodal.data.world import sample_image, split_seed
from multimodal.eval.scorer import score_frames
from multimodal.tokenizers.autoencoder import CausalAutoencoder


def encode(ae: CausalAutoencoder, frames: list) -> torch.Tensor:
    """(1, 64, 64, 3) uint8 frames -> normalised latents [N, 16, 8, 8]."""
    x = torch.stack([torch.from_numpy(f).float().permute(3, 0, 1, 2) for f in frames]) / 127.5 - 1   # [N, 3, 1, H, W]
    out = []
    with torch.no_grad():
        for chunk in x.split(64):
            z = ae.encode(chunk)
            out.append(ae.normalize_latents(z[0] if isinstance(z, tuple) else z)[:, :, 0])
    return torch.cat(out)


def single_digits(split: str, items: int) -> tuple[list, torch.Tensor]:
    """The rendered single-digit images among the first `items` of `split`, and their digits."""
    frames, labels = [], []
    for i in range(items):
        s = sample_image(split_seed(split, i))
        if s.kind == "single" and s.objects[0].shape.startswith("digit"):
            frames.append(render_sample(s))
            labels.append(int(s.objects[0].shape.split()[1]))
    return frames, torch.tensor(labels)


def probes() -> dict[str, nn.Module]:
    return {
        "linear": nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 10)),
        "mlp": nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 512), nn.GELU(), nn.Linear(512, 10)),
        "conv": nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, 64, 3, padding=1), nn.GELU(),
                              nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, 10)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="validation images whose reconstructions are scored")
    parser.add_argument("--train-items", type=int, default=20_000, help="training items searched for single digits")
    parser.add_argument("--val-items", type=int, default=3_000, help="validation items searched for single digits")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "digit_probe.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    ae = CausalAutoencoder.from_pretrained().eval()
    report: dict = {"settings": vars(args)}

    passed = digit_passed = digit_total = 0
    for i in range(args.images):
        s = sample_image(split_seed("validation", i))
        frames = render_sample(s)
        x = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
        with torch.no_grad():
            z = ae.encode(x)
            rec = ae.decode(z[0] if isinstance(z, tuple) else z)
        rec = ((rec[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        ok = score_frames(s.caption, rec).passed
        passed += ok
        if "digit" in s.caption:
            digit_total += 1
            digit_passed += ok
    report["reconstructions"] = {"images": args.images, "passed": passed, "with_a_digit": digit_total,
                                 "with_a_digit_passed": digit_passed}
    print(f"reconstructions: {passed}/{args.images} pass the scorer; {digit_passed}/{digit_total} with a digit")

    train_frames, y = single_digits("train", args.train_items)
    val_frames, vy = single_digits("validation", args.val_items)
    x, vx = encode(ae, train_frames), encode(ae, val_frames)
    report["probes"] = {"train_digits": len(y), "validation_digits": len(vy)}
    for name, net in probes().items():
        torch.manual_seed(0)
        for p in net.parameters():          # the same initial draw whatever ran before
            if p.ndim > 1:
                nn.init.kaiming_uniform_(p, a=5 ** 0.5)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
        t0 = time.perf_counter()
        for _ in range(args.epochs):
            for idx in torch.randperm(len(y)).split(128):
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            train_acc = (net(x).argmax(1) == y).float().mean().item()
            val_acc = (net(vx).argmax(1) == vy).float().mean().item()
        report["probes"][name] = {"train_accuracy": train_acc, "validation_accuracy": val_acc,
                                  "parameters": sum(p.numel() for p in net.parameters()),
                                  "seconds": time.perf_counter() - t0}
        print(f"{name:>6}: train {100 * train_acc:.1f}%  validation (unseen glyphs) {100 * val_acc:.1f}%  "
              f"({report['probes'][name]['seconds']:.0f} s)")
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                         "torch": torch.__version__}
    report["seconds"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
