"""What a visual stem's convolutions still read: 1 x 1 readers trained on frozen stem features (docs/quality.md,
"Pretraining the stem").

    python benchmarks/stem_probe.py runs/stem/visual_stem.safetensors runs/stage7/checkpoints/step_00000300/model.safetensors --threads 1

Each file is a pretrained stem (`multimodal train stem`) or a model's weights holding one (`visual_stem.conv*`, a
training checkpoint's or a pipeline's `model.safetensors`). Its two convolutions are frozen and three 1 x 1 readers
(shape incl. digit, colour, size per latent cell, `stem_pretraining.StemReader`) are trained on them over the first
`--images` training images (AdamW 3e-3, `--updates` of 256 latent frames, seed 0), then scored on the first
`--validation` validation images (unseen digit glyphs). The same readers on the same data for every file: a drop
says the features lost what the pretraining put in. Latents come from the trainer's caches in `--cache` (encoded
there once if missing). ~35 s per file on one core of a 2-core AVX2 AMD EPYC; JSON: benchmarks/results/stem_probe.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from multimodal.data.datasets import WorldDataConfig, WorldDataset
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.training.latent_cache import cached_latents
from multimodal.training.stem_pretraining import STEM_KEYS, StemReader, accuracies, frames_and_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="stem files or model weights with a visual stem")
    parser.add_argument("--images", type=int, default=20_000, help="training images the readers learn from")
    parser.add_argument("--validation", type=int, default=1_000, help="validation images scored")
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--cache", default="runs/stem/latents", help="folder of cached latents (written if missing)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "stem_probe.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ae = CausalAutoencoder.from_pretrained().eval()
    cache = Path(args.cache)

    def read(split: str, items: int, length: int, name: str):
        base = WorldDataset(WorldDataConfig(split=split, modality="image", length=length))
        return frames_and_targets(cached_latents(cache / name, ae, base, items), base, items,
                                  ae.config.spatial_compression, ae.config.temporal_compression)

    x, y = read("train", args.images, 100_000, "image.safetensors")
    vx, vy = read("validation", args.validation, args.validation, "validation-image.safetensors")
    report: dict = {"settings": vars(args), "files": {}}
    for name in args.files:
        state = load_file(name)
        prefix = "visual_stem." if any(k.startswith("visual_stem.") for k in state) else ""
        missing = [prefix + k for k in STEM_KEYS if prefix + k not in state]
        if missing:
            raise SystemExit(f"{name}: no visual stem (missing {missing})")
        width, channels = state[prefix + "conv1.weight"].shape[:2]
        torch.manual_seed(0)
        reader = StemReader(channels, width)
        reader.stem.load_state_dict({k: state[prefix + k].float() for k in STEM_KEYS}, strict=False)
        reader.stem.requires_grad_(False)
        opt = torch.optim.AdamW([p for p in reader.parameters() if p.requires_grad], lr=3e-3)
        gen, t0 = torch.Generator().manual_seed(0), time.perf_counter()
        for _ in range(args.updates):
            idx = torch.randint(0, len(x), (256,), generator=gen)
            loss = reader.loss(x[idx], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = accuracies(reader, vx, vy)
        report["files"][name] = {**acc, "seconds": time.perf_counter() - t0}
        print(f"{name}: shapes {100 * acc['shape']:.1f}%, digits {100 * acc['digit']:.1f}%, colours "
              f"{100 * acc['colour']:.1f}%, sizes {100 * acc['size']:.1f}% of {acc['objects']} validation objects "
              f"({acc['digits']} digits)")
    report["threads"] = torch.get_num_threads()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
