"""Seconds per image, per video, per caption and per text continuation, and the speed-up of head-only denoising, as JSON.

    python benchmarks/pipelines.py [--model PATH | --preset tiny] [--steps 28] [--repeats 3] [--threads N]
    python benchmarks/pipelines.py --model shapes --candidates 1,2,4,8 --threads 2     # best of K drafts

On each device (CPU, and CUDA when present) it times, side by side in one run and on the same model:

- text-to-image (one 64x64 image) and text-to-video (one 17-frame clip), CFG on, `--steps` steps, vae decode included;
- video and image captioning and text generation (exactly `--tokens` new tokens: greedy, `min_new_tokens`);
- the denoising loop two ways, with the same scheduler, noise and guidance:
  `head_only`: the backbone runs once over prompt + queries, then only the flow head per step (what the pipelines do);
  `backbone_every_step`: the backbone recomputes the query states at every step, then the head (how a model whose
  transformer itself denoises, e.g. Transfusion, pays per step). Both give the same latents (`max_abs_diff`);
- with `--candidates`, one image and one video returned as the best of K drafts (`num_candidates=K`: K drafts
  denoised as one batch, decoded, re-encoded and scored by the model), for each K round-robin, with the ratio to K=1.

Without `--model`, a randomly initialised pipeline of `--preset` is timed: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from multimodal.pipelines import (ImageCaptionPipeline, TextGenerationPipeline, TextToImagePipeline,
                                  TextToVideoPipeline, VideoCaptionPipeline)
from multimodal.pipelines.visual_generation import set_scheduler_timesteps


def _clock(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def timed(fn, repeats: int, device: torch.device) -> float:
    """Fastest of `repeats` runs of `fn()` after one warm-up run (the minimum is the least disturbed by other load
    on a shared machine, as `timeit` advises)."""
    fn()
    return min(_clock(fn, device) for _ in range(repeats))


def timed_round_robin(fns: dict, repeats: int, device: torch.device) -> dict:
    """Like `timed` for several functions, run in turn so all see the same background load -> {name: seconds}."""
    for fn in fns.values():
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_clock(fn, device))
    return {name: min(t) for name, t in times.items()}


def timed_pair(fn_a, fn_b, repeats: int, device: torch.device) -> tuple[float, float]:
    """Like `timed` for two functions, run alternately so both see the same background load."""
    fn_a(), fn_b()
    a, b = [], []
    for _ in range(repeats):
        a.append(_clock(fn_a, device))
        b.append(_clock(fn_b, device))
    return min(a), min(b)


@torch.no_grad()
def denoise(pipe: TextToImagePipeline, kind: str, steps: int, guidance: float, every_step: bool,
            shape: tuple[int, ...]) -> torch.Tensor:
    """The CFG flow loop of `VisualGeneration`, optionally recomputing the backbone states at every step."""
    model, head = pipe.model, pipe.model.head(kind)
    ids = [pipe.tokenizer.encode("a red circle above a blue square"), []]          # conditional, unconditional
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(pipe.device, pipe.dtype)
    timesteps = set_scheduler_timesteps(pipe.scheduler, steps, pipe.device, shape[2] * shape[3] * shape[4])
    cond = None if every_step else model.encode_prompts(ids, kind)                 # [2, Nq, dim], once
    for t in timesteps:
        states = model.encode_prompts(ids, kind) if every_step else cond
        tt = t.to(pipe.device, torch.float32).expand(2)
        v_c, v_u = head(torch.cat([latents, latents]), tt, states).chunk(2)
        v = v_u + guidance * (v_c - v_u)
        latents = pipe.scheduler.step(v, t, latents, return_dict=False)[0]
    return latents


def bench_device(pipe: TextToImagePipeline, device: torch.device, args) -> dict:
    pipe.to(device)
    video = TextToVideoPipeline.from_pipe(pipe)
    vcap, icap, text = (cls.from_pipe(pipe) for cls in (VideoCaptionPipeline, ImageCaptionPipeline,
                                                         TextGenerationPipeline))
    for p in (pipe, video, vcap, icap, text):
        p.set_progress_bar_config(disable=True)
    cfg = pipe.model.config
    clip = np.random.default_rng(0).integers(0, 256, (cfg.num_frames, cfg.height, cfg.width, 3), dtype=np.uint8)
    gen = torch.Generator().manual_seed(0)
    no_eos = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens)           # exactly --tokens tokens
    if args.only_candidates:
        return {"candidates": time_candidates(pipe, video, args, device)}
    r = {
        "seconds_per_image": timed(lambda: pipe("a red circle above a blue square", num_inference_steps=args.steps,
                                                generator=gen, output_type="np"), args.repeats, device),
        "seconds_per_video": timed(lambda: video("a small blue square moves left", num_inference_steps=args.steps,
                                                 generator=gen, output_type="np"), args.repeats, device),
        "seconds_per_video_caption": timed(lambda: vcap(clip, **no_eos), args.repeats, device),
        "seconds_per_image_caption": timed(lambda: icap(clip[0], **no_eos), args.repeats, device),
        "seconds_per_text": timed(lambda: text("a red circle", **no_eos), args.repeats, device),
    }
    for kind, shape in (("image", pipe.model.image_head.latent_shape(1, cfg.height, cfg.width, cfg.spatial_compression)),
                        ("video", pipe.model.video_head.latent_shape(1, cfg.num_frames, cfg.height, cfg.width,
                                                                     cfg.temporal_compression, cfg.spatial_compression))):
        fast, slow = timed_pair(lambda: denoise(pipe, kind, args.steps, 3.0, False, shape),
                                lambda: denoise(pipe, kind, args.steps, 3.0, True, shape), args.repeats, device)
        diff = (denoise(pipe, kind, args.steps, 3.0, False, shape) - denoise(pipe, kind, args.steps, 3.0, True, shape))
        r[f"{kind}_denoise"] = {"head_only_seconds": fast, "backbone_every_step_seconds": slow,
                                "speedup": slow / fast, "max_abs_diff": float(diff.abs().max())}
    if args.candidates:
        r["candidates"] = time_candidates(pipe, video, args, device)
    return r


def time_candidates(pipe: TextToImagePipeline, video: TextToVideoPipeline, args, device: torch.device) -> dict:
    """Seconds for one image / one video returned as the best of K drafts, every K round-robin."""
    ks = [int(k) for k in args.candidates.split(",")]
    fns = {}
    for k in ks:
        fns[f"image/{k}"] = lambda k=k: pipe("a red circle above a blue square", num_inference_steps=args.steps,
                                             generator=torch.Generator().manual_seed(0), num_candidates=k,
                                             output_type="np")
        fns[f"video/{k}"] = lambda k=k: video("a small blue square moves left", num_inference_steps=args.steps,
                                              generator=torch.Generator().manual_seed(0), num_candidates=k,
                                              output_type="np")
    seconds = timed_round_robin(fns, args.repeats, device)
    return {kind: {str(k): {"seconds": seconds[f"{kind}/{k}"], "ratio_to_k1": seconds[f"{kind}/{k}"]
                            / seconds[f"{kind}/{ks[0]}"]} for k in ks} for kind in ("image", "video")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="saved pipeline folder or built-in name (default: random --preset)")
    parser.add_argument("--preset", default="tiny", choices=("debug", "tiny"))
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per caption / text")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--candidates", default="", help="comma-separated K (first one the baseline, e.g. 1,2,4,8): "
                        "time the best of K drafts per image and video")
    parser.add_argument("--only-candidates", action="store_true", help="time only the --candidates rows")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = (TextToImagePipeline.from_pretrained(args.model) if args.model
            else TextToImagePipeline.from_scratch(args.preset, seed=0))
    cfg = pipe.model.config
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    report = {
        "model": args.model or f"random {args.preset}",
        "parameters": {"backbone": sum(p.numel() for p in pipe.model.backbone.parameters()),
                       "image_head": sum(p.numel() for p in pipe.model.image_head.parameters()),
                       "video_head": sum(p.numel() for p in pipe.model.video_head.parameters()),
                       "vae": sum(p.numel() for p in pipe.vae.parameters())},
        "settings": {"steps": args.steps, "guidance_scale": 3.0, "new_tokens": args.tokens, "repeats": args.repeats,
                     "height": cfg.height, "width": cfg.width, "num_frames": cfg.num_frames,
                     "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                     "machine": platform.processor() or platform.machine()},
        "devices": {},
    }
    for device in devices:
        report["devices"][device.type] = bench_device(pipe, device, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
