"""`multimodal train`: train the model (default) or the video autoencoder.

    multimodal train --preset debug --out runs/lm                      # LM on the world's captions
    multimodal train --config my_run.json --data photos/ --out runs/mine --device cuda
    multimodal train --out runs/lm --resume                            # continue where the run stopped
    multimodal train --init-from shapes --data photos/ --out runs/ft   # fine-tune the built-in model
    multimodal train autoencoder --out runs/ae --max-time 600          # the causal 3D autoencoder
    multimodal train stem --out runs/stem                              # pretrain a visual stem's convolutions
    python -m multimodal train ...   /   torchrun -m multimodal train ...

The model's recipe comes from a training preset (`--preset`, see `TRAIN_PRESETS`) or a JSON config file
(`--config`, keys = `TrainConfig` fields; unknown keys are rejected by name), then the flags override it. With
`--resume` and neither, the run's own `<out>/train_config.json` is used. SIGTERM and Ctrl-C stop the run cleanly
after the current update, with a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

TARGETS = ("model", "autoencoder", "stem")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the model, the video autoencoder or a visual stem",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=__doc__.split("\n\n", 1)[1].split("The model's recipe")[0])
    p.add_argument("target", nargs="?", default="model", choices=TARGETS,
                   help="what to train (default: model); stem: a visual stem's convolutions as a reader of the "
                        "world's objects (training/stem_pretraining.py)")
    p.add_argument("--preset", default=None,
                   help="training preset: debug, tiny (text only), mix-debug, mix-tiny, shapes-gpu, and shapes-demo, "
                        "shapes-demo-2, shapes-demo-3, ... (all tasks: the built-in model's stages, each in the "
                        "README's reproduction); an unknown name lists them all; default debug")
    p.add_argument("--config", default=None, help="JSON file of TrainConfig fields")
    p.add_argument("--data", default=None, help="'world', or a folder / .jsonl of (image or video, caption) pairs")
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics, final model)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--init-from", default=None,
                   help="start from a trained model: a pipeline folder or built-in name (e.g. shapes), or a text "
                        "run's model/ folder; its architecture and tokenizer are used (fine-tuning)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer updates (also the schedule's length)")
    p.add_argument("--max-time", type=float, default=None, help="stop cleanly after this many seconds")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (on a busy shared CPU, 1 is often much faster than the default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = p.add_argument_group("distributed (under torchrun; see docs/distributed.md)")
    d.add_argument("--ep", type=int, default=1,
                   help="expert-parallel degree: ranks that split the routed experts (divides the process count)")
    d.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each block's activations in the backward pass (less memory, more compute)")
    d.add_argument("--dist-timeout", type=float, default=300.0,
                   help="seconds after which a missing, dead or stuck rank is an error (default 300)")
    p.set_defaults(func=run)


def model_config(args):
    """The TrainConfig the flags describe (preset or file, then flag overrides)."""
    from multimodal.training.config import TrainConfig, train_preset

    if args.config and args.preset:
        raise ValueError("pass either --config or --preset, not both")
    saved = Path(args.out) / "train_config.json"
    if args.config:
        cfg = TrainConfig.load(args.config)
    elif args.preset is None and args.resume and saved.is_file():
        cfg = TrainConfig.load(saved)
    else:
        cfg = train_preset(args.preset or "debug")
    changes = {k: v for k, v in (("data", args.data), ("device", args.device), ("max_steps", args.max_steps),
                                 ("max_time", args.max_time), ("seed", args.seed),
                                 ("init_from", args.init_from)) if v is not None}
    if args.no_progress:
        changes["progress"] = False
    if "max_steps" in changes and changes["max_steps"] < cfg.warmup_steps:
        changes["warmup_steps"] = changes["max_steps"]
    return cfg.replace(**changes) if changes else cfg


def _install_stop_handlers(trainer) -> None:
    def request_stop(signum, frame):
        trainer.stop_requested = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, request_stop)
        except ValueError:          # not the main thread (e.g. called from a notebook worker)
            pass


def make_trainer(cfg, args):
    """`Trainer`, or `DistributedTrainer` under torchrun / with --ep / to resume a distributed checkpoint."""
    import os

    from multimodal.training.distributed import ParallelConfig
    from multimodal.training.distributed_trainer import DistributedTrainer, wants_distributed
    from multimodal.training.trainer import Trainer

    parallel = ParallelConfig(ep=args.ep, activation_checkpointing=args.activation_checkpointing,
                              timeout_s=args.dist_timeout)
    if wants_distributed(os.environ, parallel, args.out, args.resume):
        return DistributedTrainer(cfg, args.out, resume=args.resume, parallel=parallel)
    return Trainer(cfg, args.out, resume=args.resume)


def run_model(args) -> int:
    from multimodal.training.distributed import distributed_errors, shutdown_after

    cfg = model_config(args)
    with distributed_errors(), shutdown_after():
        trainer = make_trainer(cfg, args)
        main = trainer.is_main_process()
        if main:
            print(f"training {args.out}: {trainer.describe()}", flush=True)
        _install_stop_handlers(trainer)
        result = trainer.train()
    evals = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.eval.items()))
    loss = "n/a" if result.loss is None else f"{result.loss:.4f}"
    if main:
        print(f"stopped at step {result.step} ({result.stop_reason}); train loss {loss}; {evals}; "
              f"checkpoint {result.checkpoint}", flush=True)
    return 0


def run_autoencoder(args) -> int:
    """Delegate to the autoencoder's own training loop (`multimodal.training.autoencoder`)."""
    try:
        from multimodal.tokenizers.config import AutoencoderConfig
        from multimodal.training.autoencoder import AutoencoderTrainConfig, train_autoencoder
    except ImportError as exc:
        raise ValueError(f"autoencoder training is not part of this build ({exc})") from exc
    from multimodal.config_keys import reject_unknown_keys

    data = json.loads(Path(args.config).read_text()) if args.config else {}
    model_kwargs = data.pop("model", {})
    reject_unknown_keys(AutoencoderTrainConfig, data)
    out = Path(args.out)
    data["out"] = str(out / "autoencoder.safetensors") if out.suffix != ".safetensors" else str(out)
    if args.max_steps is not None:
        data["max_steps"] = args.max_steps
    if args.max_time is not None:
        data["minutes"] = args.max_time / 60.0
    if args.seed is not None:
        data["seed"] = args.seed
    for flag in ("data", "device", "preset", "init_from"):
        if getattr(args, flag) not in (None, "world"):
            raise ValueError(f"--{flag.replace('_', '-')} is not used by autoencoder training (it trains on the "
                             f"world's frames on CPU)")
    Path(data["out"]).parent.mkdir(parents=True, exist_ok=True)
    cfg = AutoencoderTrainConfig(**data)
    _, summary = train_autoencoder(cfg, AutoencoderConfig(**model_kwargs), log=lambda s: print(s, flush=True))
    print(f"wrote {cfg.out}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in summary.items()), flush=True)
    return 0


def run_stem(args) -> int:
    """Pretrain a visual stem (`multimodal.training.stem_pretraining`): --config takes StemPretrainConfig fields."""
    from multimodal.config_keys import reject_unknown_keys
    from multimodal.training.stem_pretraining import StemPretrainConfig, pretrain_stem

    data = json.loads(Path(args.config).read_text()) if args.config else {}
    reject_unknown_keys(StemPretrainConfig, data)
    for flag in ("data", "preset", "init_from"):
        if getattr(args, flag) not in (None, "world"):
            raise ValueError(f"--{flag.replace('_', '-')} is not used by stem pretraining (it reads the world's "
                             f"latents)")
    if args.resume:
        raise ValueError("--resume is not used by stem pretraining (a run takes minutes: run it again)")
    for key, value in (("max_steps", args.max_steps), ("seed", args.seed), ("device", args.device)):
        if value is not None:
            data[key] = value
    report = pretrain_stem(StemPretrainConfig(**data), args.out, log=lambda s: print(s, flush=True))
    print("validation: " + "; ".join(f"{k}: shape {100 * v['shape']:.1f}%, digit {100 * v['digit']:.1f}%, colour "
                                     f"{100 * v['colour']:.1f}%, size {100 * v['size']:.1f}%"
                                     for k, v in report["validation"].items()), flush=True)
    return 0


def run(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)
    return {"autoencoder": run_autoencoder, "stem": run_stem}.get(args.target, run_model)(args)
