"""`multimodal train-autoencoder`: train the causal 3D autoencoder on shapes-world frames.

Example (the run that produced the shipped weights, on the otherwise idle 2-core CPU)::

    multimodal train-autoencoder --minutes 29 --image-batch 12 --save-dtype float16 \
        --out runs/autoencoder/autoencoder.safetensors

It prints the loss as it goes, then the PSNR of images and 17-frame videos of the world's test split, and writes
one safetensors file (weights, config and latent statistics) atomically. The budget is wall-clock time, so other
work on the machine costs steps. On a CPU shared with other jobs, `OMP_WAIT_POLICY=PASSIVE` in the environment
stops idle OpenMP threads from spinning (measured here: 13x less CPU time per step on a loaded machine, but 1.7x
slower steps, 0.33 s against 0.19 s, on an idle one); it must be set before the process starts.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("train-autoencoder", help="train the causal 3D video autoencoder on shapes-world frames")
    p.add_argument("--out", default="runs/autoencoder/autoencoder.safetensors", help="output safetensors file")
    p.add_argument("--minutes", type=float, default=29.0, help="wall-clock training budget (cosine LR over it)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: time budget only)")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--video-batch", type=int, default=2, help="videos per step")
    p.add_argument("--video-frames", type=int, default=9, help="frames per training video (1 + 4k)")
    p.add_argument("--image-batch", type=int, default=8, help="images per step")
    p.add_argument("--world-fraction", type=float, default=0.8,
                   help="share of training clips from the shapes world (the rest from the stand-in renderer)")
    p.add_argument("--latent-channels", type=int, default=16)
    p.add_argument("--channels", type=int, nargs=3, default=None, metavar=("C0", "C1", "C2"), help="widths at H/2, H/4, H/8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--save-dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.set_defaults(func=run)


def run(args) -> int:
    from multimodal.tokenizers.config import AutoencoderConfig
    from multimodal.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

    model_kwargs = {"latent_channels": args.latent_channels}
    if args.channels:
        model_kwargs["channels"] = tuple(args.channels)
    cfg = AutoencoderTrainConfig(
        out=args.out,
        minutes=args.minutes,
        max_steps=args.max_steps,
        lr=args.lr,
        video_batch=args.video_batch,
        video_frames=args.video_frames,
        image_batch=args.image_batch,
        world_fraction=args.world_fraction,
        seed=args.seed,
        threads=args.threads,
        save_dtype=args.save_dtype,
    )
    _, summary = train_autoencoder(cfg, AutoencoderConfig(**model_kwargs), log=lambda s: print(s, flush=True))
    print(f"wrote {args.out}: image PSNR {summary['image_psnr']:.2f} dB, video PSNR {summary['video_psnr']:.2f} dB, "
          f"{summary['steps']} steps in {summary['train_seconds'] / 60:.1f} min")
    return 0
