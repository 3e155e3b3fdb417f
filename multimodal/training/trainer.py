"""The trainer: one loop for every task mix, with exact resume.

    trainer = Trainer(train_preset("debug"), out="runs/lm")
    result = trainer.train()            # or Trainer(cfg, out, resume=True).train() to continue

One optimizer update = `grad_accum` micro-batches, each of one task drawn by `TaskMix`; the mean loss is
back-propagated, the global gradient norm clipped to `grad_clip`, the learning rate set by `WarmupCosine`, MoE
router biases nudged towards balance (`balance.LoadTracker`). Forward passes run under bf16 autocast where the
device supports it (`precision="auto"`: CUDA with bf16; on a CPU ask for "bf16" where it measures faster; see
`precision`).

Output folder `out`:

    train_config.json   the run's TrainConfig        model_config.json   the backbone's BackboneConfig
    tokenizer.json      the BPE trained on the data  metrics.jsonl, metrics.png   curves (see `metrics`)
    learning_curve.png  scores against training minutes, when `score_samples` is set (see `learning_curve`)
    checkpoints/        training state (see `checkpoint`), the newest `keep_checkpoints` of them
    model/              the final weights for inference (`convert.checkpoint.save_pretrained` + tokenizer.json)

Options of the media runs: `latent_cache` trains on latents encoded once before the first update
(`latent_cache`), `flow_repeats` draws several noise levels per backbone pass, `ema_decay` keeps an exponential
moving average of the weights (`ema`), which evaluation and export use. `init_from` starts from a trained model's
weights, tokenizer and autoencoder (fine-tuning, `warm_start`).

Exact resume: a checkpoint holds the weights and buffers (and the EMA shadows), the optimizer state, the schedule step, each task's
data position and every RNG; the task of each micro-batch is a pure function of (seed, step, micro); evaluation
runs on its own data and RNG. A run killed at any instant and resumed therefore logs the same losses as one never
interrupted: bit for bit on a CPU with the same thread count (tested with SIGKILL on a real subprocess); on CUDA up
to the non-deterministic kernels (atomic adds in scatter/index_add) unless `torch.use_deterministic_algorithms(True)`.

Construction is split into small methods — `build_tokenizer`, `build_datasets`, `build_model`, `wrap_model`,
`build_optimizer`, `model_state`, `load_model_state`, `is_main_process` — so distributed training (FSDP2, expert
parallelism, activation checkpointing, compile) can subclass the trainer and wrap the model from outside the
model files.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..backbone.transformer import Transformer
from ..config import BackboneConfig, preset
from .balance import LoadTracker
from .checkpoint import latest_checkpoint, load_checkpoint, restore_rng, rng_of, save_checkpoint
from .config import TrainConfig
from .ema import EMA
from .growth import grown_model_config, grown_parts, load_grown
from .learning_curve import learning_curve_panels, plot_learning_curve
from .metrics import MetricsLog, plot_metrics, read_metrics
from .optimizer import build_optimizer, under
from .precision import choose_precision
from .schedule import WarmupCosine
from .tasks import TEXT_TASKS, SampleStream, TaskMix, TextTask, caption_of
from .validation import validation_loss
from .warm_start import WarmStart, check_overrides, load_warm_start

Evaluator = Callable[["Trainer"], dict[str, float]]

# fields a resumed run may change; every other field is part of the recipe and must match the checkpoint's
RESUMABLE_FIELDS = ("max_time", "device", "progress", "log_every", "eval_every", "eval_batches", "save_every",
                    "keep_checkpoints", "score_samples", "score_steps", "score_guidance")
TOKENIZER_CORPUS = 5000          # captions the BPE is trained on
EMA_PREFIX = "ema/"              # checkpoint keys of the EMA shadows (parameter names never hold a "/")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run with `precision` uses on `device` (None: fp32): see `precision.choose_precision`
    (on a CPU, bf16 only where a timed matmul says it is faster)."""
    return choose_precision(precision, device).dtype


@dataclass
class TrainResult:
    """What `Trainer.train` returns: where it stopped, why, and the last logged losses."""

    step: int
    stop_reason: str             # "max_steps", "max_time" or "stop_requested"
    loss: float | None
    eval: dict[str, float]
    checkpoint: Path | None
    train_seconds: float


class Trainer:
    """Trains the model of `config` into folder `out`; `resume=True` continues from its newest checkpoint.

    `evaluators` are called every `eval_every` updates and at the end, with the trainer, in eval mode under
    `torch.no_grad()`, and return {name: value} logged as `eval/<name>`; the validation loss always runs first.
    """

    def __init__(self, config: TrainConfig, out: str | Path, resume: bool = False,
                 evaluators: list[Evaluator] | None = None, log: Callable[[str], None] = print) -> None:
        self.config, self.out, self.resume = config, Path(out), resume
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} requested, but CUDA is not available on this machine")
        self.evaluators: list[Evaluator] = [validation_loss] + list(evaluators or [])
        self.log = log
        self.step = 0
        self.stop_requested = False          # set from a signal handler for a clean stop with a checkpoint
        self.precision = choose_precision(config.precision, self.device)
        self.amp_dtype = self.precision.dtype
        if self.device.type == "cpu" and config.precision == "bf16":
            self.log(self.precision.reason)            # once per run: the timing, or the fallback to fp32
        self.skipped_items = 0
        self.train_seconds = 0.0             # seconds spent in updates, summed over resumes
        self.cpu_seconds = 0.0               # this process's CPU time (all threads) spent in updates, the same way
        self._resume_from: Path | None = None
        self.warm: WarmStart | None = None
        self.compiled = None                 # with `compile`: the guarded parts' shared state (training/compile.py)
        self._setup()
        self._last_saved = self.step if self._resume_from is not None else -1

    # ------------------------------------------------------------------------------------------ construction
    def is_main_process(self) -> bool:
        """Only the main process writes logs, plots and checkpoints (distributed subclasses override)."""
        return not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_rank() == 0

    @property
    def trains_media(self) -> bool:
        """Whether any task sees pixels (then the model is the unified model, with the frozen autoencoder)."""
        return any(name not in TEXT_TASKS for name, w in self.config.tasks.items() if w > 0)

    def build_datasets(self) -> tuple[dict[str, Dataset], dict[str, Dataset | None]]:
        """(train, validation) datasets by data kind ("mixed", "image", "video"): the world's splits, or the
        user's pairs with every 20th pair held out for validation."""
        cfg = self.config
        kinds = ("mixed", "image", "video")
        if cfg.data == "world":
            from ..data.datasets import WorldDataConfig, WorldDataset
            n_val = max(cfg.eval_batches * cfg.micro_batch_size,       # the loss batches, and the scored items
                        cfg.score_samples_of("image"), cfg.score_samples_of("video"))
            train = {k: WorldDataset(WorldDataConfig(split="train", modality=k, length=cfg.train_samples))
                     for k in kinds}
            val = {k: WorldDataset(WorldDataConfig(split="validation", modality=k, length=n_val)) for k in kinds}
            return train, val
        from ..data.user_data import UserPairsDataset
        pairs = UserPairsDataset(cfg.data)
        train: dict[str, Dataset] = {}
        val: dict[str, Dataset | None] = {}
        for kind in kinds:
            idx = [i for i, p in enumerate(pairs.pairs) if kind == "mixed" or p.kind == kind]
            train_idx = [i for i in idx if i % 20 != 19]
            val_idx = [i for i in idx if i % 20 == 19]
            if train_idx:
                train[kind] = Subset(pairs, train_idx)
            val[kind] = Subset(pairs, val_idx) if val_idx else None
        return train, val

    def build_tokenizer(self, train: Dataset):
        """The run's BPE: loaded from `out/tokenizer.json` when resuming, else the `init_from` checkpoint's, else
        trained on the training captions."""
        from ..tokenizers.text import TextTokenizer
        path = self.out / "tokenizer.json"
        if path.is_file() and self._resume_from is not None:
            return TextTokenizer.from_file(path)
        if self.warm is not None:
            tok = TextTokenizer.from_file(self.warm.tokenizer_file)
            if self.is_main_process():
                tok.save(path)
            return tok
        n = min(len(train), TOKENIZER_CORPUS)
        captions = [caption_of(train, i) for i in range(n)]
        tok = TextTokenizer.train(captions, vocab_size=self.config.vocab_size)
        if self.is_main_process():
            tok.save(path)
        return tok

    def backbone_config(self) -> BackboneConfig:
        """The backbone: the preset, the config's `model` overrides, and the tokenizer's vocabulary and ids (with
        `init_from`: the checkpoint's)."""
        cfg = self.config
        if self.warm is not None:
            backbone = self.warm.backbone
        else:
            vocab = -(-self.tokenizer.vocab_size // 64) * 64          # round up: friendlier matmul shapes
            backbone = preset(cfg.preset).replace(**cfg.model)
            backbone = backbone.replace(vocab_size=max(vocab, backbone.vocab_size if "vocab_size" in cfg.model else 0),
                                        bos_token_id=self.tokenizer.bos_id, eos_token_id=self.tokenizer.eos_id,
                                        pad_token_id=self.tokenizer.pad_id)
        if backbone.max_position_embeddings < cfg.seq_len:
            raise ValueError(f"seq_len ({cfg.seq_len}) exceeds the model's max_position_embeddings "
                             f"({backbone.max_position_embeddings})")
        return backbone

    def model_config(self):
        """`BackboneConfig` for text-only runs; the unified model's `ModelConfig` (heads sized by the preset, latent
        channels from the autoencoder) when a task sees pixels; with `init_from`, the checkpoint's."""
        if self.warm is not None and self.trains_media:
            return grown_model_config(self.config, self.warm.config, self.warm.path)
        if not self.trains_media:
            return self.backbone_config()
        from ..model import TokenIds, model_preset
        if self.config.preset not in ("debug", "tiny"):
            raise ValueError(f"the unified model is built for presets 'debug' and 'tiny', got {self.config.preset!r}")
        config = model_preset(self.config.preset, TokenIds.from_tokenizer(self.tokenizer))
        channels = self.autoencoder.config.latent_channels
        heads = {f"{kind}_head": {**getattr(config, f"{kind}_head").__dict__, **self.config.flow_head_overrides(kind),
                                  "latent_channels": channels} for kind in ("image", "video")}
        stems = {} if self.config.visual_stem is None else {"visual_stem": self.config.visual_stem}
        return config.replace(backbone=self.backbone_config(), latent_channels=channels, **heads, **stems)

    def cache_latents(self) -> None:
        """With `latent_cache`: the image and video training data of the media tasks become their first N items'
        latents, encoded once by the frozen autoencoder (`latent_cache.cached_latents`, kept in `out/latents/`)."""
        from .latent_cache import ENCODE_BATCH, LatentDataset, cached_latents
        from .media_tasks import MEDIA_TASKS
        kinds = sorted({MEDIA_TASKS[n][0] for n, w in self.config.tasks.items() if w > 0 and n in MEDIA_TASKS})
        for kind in kinds:
            data, items = self.train_data.get(kind), self.config.latent_cache_items(kind)
            if data is None or items == 0 or isinstance(data, LatentDataset):
                continue
            self.train_data[kind] = cached_latents(self.out / "latents" / f"{kind}.safetensors", self.autoencoder,
                                                   data, items, log=self.log, write=self.is_main_process(),
                                                   workers=self.config.data_workers,
                                                   batch=256 if self.device.type == "cuda" else ENCODE_BATCH)

    def build_autoencoder(self) -> nn.Module | None:
        """The frozen autoencoder of the media tasks (None for text-only runs)."""
        if not self.trains_media:
            return None
        from ..tokenizers.autoencoder import CausalAutoencoder
        weights = self.config.autoencoder or (self.warm.autoencoder_file if self.warm is not None else None)
        ae = CausalAutoencoder.from_pretrained(weights, device=self.device)
        if self.warm is not None and ae.config.latent_channels != self.warm.config.latent_channels:
            raise ValueError(f"autoencoder {weights}: {ae.config.latent_channels} latent channels, but the init_from "
                             f"model {self.warm.path} was trained on {self.warm.config.latent_channels}")
        ae.requires_grad_(False)
        return ae.eval()

    def build_model(self) -> nn.Module:
        """A freshly initialised model on `self.device` (seeded: identical in every run with the same seed), holding
        the `init_from` checkpoint's weights when there is one and the run is not resuming."""
        torch.manual_seed(self.config.seed)
        if self.trains_media:
            from ..model import UnifiedModel
            model = UnifiedModel(self.model_config()).to(self.device)
        else:
            model = Transformer(self.model_config()).to(self.device)
        if self.warm is not None:
            tensors, self.warm.tensors = self.warm.tensors, None     # from here on only the model holds them
            if self.warm.generation_config is not None:              # its decoding defaults go on to the export
                model.generation_config = self.warm.generation_config
            if self._resume_from is None:
                parts = grown_parts(self.config, self.warm.config, model) if self.trains_media else []
                load_grown(model, tensors, parts, self.warm.path, self.log)
        if self.config.visual_stem_init and self._resume_from is None:
            self.load_pretrained_stem(model)
        self.freeze_parameters(model)
        return model

    def freeze_parameters(self, model: nn.Module) -> None:
        """Keep the parameters named by `freeze` (name prefixes) as loaded: no gradient, so no optimizer update."""
        if not self.config.freeze:
            return
        names = [name for name, _ in model.named_parameters()]
        frozen = 0
        for prefix in self.config.freeze:
            hits = [n for n in names if under(n, prefix)]
            if not hits:
                raise ValueError(f"freeze {prefix!r}: no parameter of the model is named so (e.g. "
                                 f"{', '.join(names[:3])}, ...)")
            for n in hits:
                p = model.get_parameter(n)
                frozen += p.numel() if p.requires_grad else 0
                p.requires_grad_(False)
        self.log(f"frozen: {', '.join(self.config.freeze)} ({frozen:,} parameters)")

    def load_pretrained_stem(self, model: nn.Module) -> None:
        """Put the convolutions of `visual_stem_init` (`multimodal train stem`) into the model's new stem; refuse, by
        name, a model without a stem or with a trained one, another width or latent size, or another autoencoder."""
        from .latent_cache import autoencoder_digest
        from .stem_pretraining import STEM_KEYS, load_stem_file

        path = self.config.visual_stem_init
        stem = getattr(model, "visual_stem", None)
        if stem is None:
            raise ValueError(f"visual_stem_init {path}: the model has no visual stem; set visual_stem (its width)")
        if self.warm is not None and self.warm.config.visual_stem:
            raise ValueError(f"visual_stem_init {path}: the init_from model {self.warm.path} already has a trained "
                             f"stem; drop visual_stem_init")
        tensors, meta = load_stem_file(path)
        if int(meta["width"]) != stem.conv1.out_channels or int(meta["latent_channels"]) != stem.conv1.in_channels:
            raise ValueError(f"visual_stem_init {path}: a stem of {meta['width']} channels over "
                             f"{meta['latent_channels']} latent channels, the model's has {stem.conv1.out_channels} "
                             f"over {stem.conv1.in_channels}")
        if meta["autoencoder"] != autoencoder_digest(self.autoencoder):
            raise ValueError(f"visual_stem_init {path}: pretrained on another autoencoder's latents than this run's")
        with torch.no_grad():
            for key in STEM_KEYS:
                stem.get_parameter(key).copy_(tensors[key])
        read = json.loads(meta.get("validation", "{}"))
        self.log(f"the visual stem's convolutions from {path} (" + "; ".join(
            f"{kind}s of the validation split: shapes {100 * v['shape']:.1f}%, digits {100 * v['digit']:.1f}%"
            for kind, v in read.items()) + ")")

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """Hook for parallel wrappers (FSDP2, expert parallel); the plain trainer returns `model`, with the parts named
        by `compile` under `torch.compile` in the training step (`training/compile.py`)."""
        if self.config.compile:
            from .compile import compile_model
            self.compiled = compile_model(model, self.config.compile)
            self.log(f"torch.compile of {', '.join(self.config.compile)} in the training step: compiled on the first "
                     f"update (eager, with one warning, if compiling fails)")
        return model

    def build_optimizer(self, model: nn.Module):
        cfg = self.config
        return build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps,
                               lr_scales=cfg.lr_scale)

    def build_tasks(self) -> dict[str, Any]:
        """The tasks with a weight > 0, by name."""
        cfg = self.config
        tasks: dict[str, Any] = {}
        for name, weight in cfg.tasks.items():
            if weight <= 0:
                continue
            if name in TEXT_TASKS:
                tasks[name] = TextTask(tokenizer=self.tokenizer, seq_len=cfg.seq_len, mtp_weight=cfg.mtp_weight)
            else:
                from .media_tasks import MEDIA_TASKS, MediaTask
                tasks[name] = MediaTask(tokenizer=self.tokenizer, autoencoder=self.autoencoder, name=name,
                                        seq_len=cfg.seq_len, flow_repeats=cfg.flow_repeats_of(MEDIA_TASKS[name][0]),
                                        flow_weighting=cfg.flow_weighting)
            if tasks[name].data_kind not in self.train_data:
                raise ValueError(f"task {name} needs {tasks[name].data_kind} items, and {cfg.data} has none")
        return tasks

    def build_curriculum(self):
        """With `curriculum`: its stages (`curriculum.Curriculum`), every media training item labelled with its kind
        from its caption (with `resident_data`, the items on the device: the first ones of the training data); else
        None."""
        if not self.config.curriculum:
            return None
        from .curriculum import Curriculum, parse_curriculum
        curriculum = Curriculum(parse_curriculum(self.config.curriculum, list(self.tasks)))
        for kind in sorted({t.kind for t in self.tasks.values() if getattr(t, "kind", None)}):
            data = self.train_data[kind]
            resident = [len(self.resident[n]) for n, t in self.tasks.items()
                        if getattr(t, "kind", None) == kind and n in self.resident]
            curriculum.label_items(kind, resident[0] if resident else len(data),
                                   lambda i, data=data: caption_of(data, i))
        return curriculum

    def enter_stage(self, index: int) -> None:
        """Switch to curriculum stage `index` (nothing without a curriculum, or when already there): each media task's
        stream becomes a fresh seeded permutation of the items the stage allows (stage 0 keeps the plain run's
        seeds, so a one-stage curriculum allowing everything trains exactly like none), and the mix becomes the
        stage's."""
        if self.curriculum is None or index == self.stage:
            return
        cfg, stage = self.config, self.curriculum.stages[index]
        for i, name in enumerate(sorted(self.tasks)):
            kind = getattr(self.tasks[name], "kind", None)
            if kind is None:
                continue
            subset = self.curriculum.subset(index, kind, name)
            self.streams[name] = SampleStream(len(subset), seed=cfg.seed * 31 + i + 7919 * index, subset=subset)
        weights = stage.tasks if stage.tasks is not None else cfg.tasks
        self.mix = TaskMix({n: weights.get(n, 0.0) for n in self.tasks}, cfg.seed)
        self.stage = index
        if self.is_main_process():
            media = sorted(self.curriculum.labels)
            sizes = ", ".join(f"{n} {self.streams[n].length:,} items" for n in sorted(self.tasks)
                              if getattr(self.tasks[n], "kind", None))
            self.log(f"curriculum stage {index + 1}/{len(self.curriculum.stages)} from update {self.step}: "
                     f"{stage.describe(tuple(media))} ({sizes})")

    def build_resident_data(self) -> dict[str, Any]:
        """With `resident_data`: by task name, the cached latents and tokenised captions of the task's media kind on
        the training device (`resident_data.ResidentMedia`), and for `text` the captions of all of them
        (`resident_data.ResidentText`); else nothing."""
        if not (self.config.resident_data and self.trains_media):
            return {}
        from .latent_cache import LatentDataset
        from .resident_data import ResidentMedia, ResidentText
        by_kind = {}
        for kind in ("image", "video"):
            if not any(getattr(t, "kind", None) == kind for t in self.tasks.values()):
                continue
            data = self.train_data.get(kind)
            if not isinstance(data, LatentDataset):
                raise ValueError(f"resident_data keeps cached latents on the device, but the {kind} data is not "
                                 f"cached: set latent_cache for {kind!r}")
            by_kind[kind] = ResidentMedia.from_latents(data, self.tokenizer, self.config.seq_len, self.device,
                                                       workers=self.config.data_workers)
        resident: dict[str, Any] = {name: by_kind[t.kind] for name, t in self.tasks.items() if getattr(t, "kind", None)
                                    in by_kind}
        if "text" in self.tasks and by_kind:
            tok = self.tokenizer
            resident["text"] = ResidentText(list(by_kind.values()), self.config.seq_len, tok.bos_id, tok.eos_id,
                                            tok.pad_id)
        return resident

    def model_state(self) -> dict[str, torch.Tensor]:
        """Tensors to checkpoint (distributed subclasses gather shards here)."""
        return self.model.state_dict()

    def load_model_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors, strict=True)

    def _setup(self) -> None:
        cfg = self.config
        ckpt_root = self.out / "checkpoints"
        self._resume_from = latest_checkpoint(ckpt_root) if self.resume else None
        if not self.resume and latest_checkpoint(ckpt_root) is not None:
            raise ValueError(f"{self.out} already holds checkpoints; pass resume=True (--resume) to continue that "
                             f"run, or choose another output folder")
        if self._resume_from is not None:
            self._check_resumable()
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        if cfg.visual_stem and not self.trains_media:
            raise ValueError(f"visual_stem={cfg.visual_stem}: the stem reads latents, but no task of this run sees "
                             f"pixels (tasks {sorted(cfg.tasks)})")
        if cfg.init_from:
            self.warm = load_warm_start(cfg.init_from, self.trains_media)
            check_overrides(self.warm, cfg.model, {k: cfg.flow_head_overrides(k) for k in ("image", "video")})
        self.train_data, self.val_data = self.build_datasets()
        self.tokenizer = self.build_tokenizer(self.train_data.get("mixed") or next(iter(self.train_data.values())))
        self.autoencoder = self.build_autoencoder()
        if cfg.latent_cache and self.trains_media:
            self.cache_latents()
        self.model = self.wrap_model(self.build_model())
        self.optimizer = self.build_optimizer(self.model)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.schedule = WarmupCosine(cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self.tasks = self.build_tasks()
        self.resident = self.build_resident_data()
        self.mix = TaskMix({n: cfg.tasks[n] for n in self.tasks}, cfg.seed)
        if any(cfg.score_samples_of(k) for k in ("image", "video")) and self.trains_media:
            from .scoring import caption_scores, generation_accuracy
            self.evaluators[1:1] = [generation_accuracy, caption_scores]
        self.streams = {name: SampleStream(len(self.resident[name]) if name in self.resident else
                                           len(self.train_data[self.tasks[name].data_kind]), seed=cfg.seed * 31 + i)
                        for i, name in enumerate(sorted(self.tasks))}
        self.curriculum, self.stage = self.build_curriculum(), -1
        self.enter_stage(0)
        self.loads = LoadTracker(self.model, self.backbone_config().moe.bias_update_speed)
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        if self.is_main_process():
            cfg.save(self.out / "train_config.json")
            (self.out / "model_config.json").write_text(json.dumps(self.model_config().to_dict(), indent=2) + "\n")
        if self._resume_from is not None:
            self._load(self._resume_from)
        elif self.is_main_process():
            self.metrics.truncate_after(0)            # a fresh run: forget lines of an attempt that never saved

    def _check_resumable(self) -> None:
        saved_path = self.out / "train_config.json"
        if not saved_path.is_file():
            return
        saved = TrainConfig.load(saved_path).to_dict()
        mine = self.config.to_dict()
        changed = sorted(k for k in mine if k not in RESUMABLE_FIELDS and mine[k] != saved.get(k))
        if changed:
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {mine[k]!r}" for k in changed)
            raise ValueError(f"cannot resume {self.out}: the recipe changed ({diff}); resume with the run's own "
                             f"config ({saved_path})")

    # ----------------------------------------------------------------------------------------- checkpoints
    def save(self) -> Path | None:
        """Write a training-state checkpoint for the current step (main process only)."""
        if not self.is_main_process():
            return None
        state = {"schedule": self.schedule.state_dict(),
                 "data": {name: s.state_dict() for name, s in self.streams.items()},
                 "config": self.config.to_dict(), "train_seconds": self.train_seconds,
                 "cpu_seconds": self.cpu_seconds}
        tensors = self.model_state()
        if self.ema is not None:
            tensors.update({EMA_PREFIX + k: v for k, v in self.ema.state_dict().items()})
        path = save_checkpoint(self.out / "checkpoints", self.step, tensors, self.optimizer.state_dict(),
                               state, keep=self.config.keep_checkpoints)
        self._last_saved = self.step
        return path

    def _load(self, path: Path) -> None:
        tensors, optimizer, state = load_checkpoint(path)
        ema = {k[len(EMA_PREFIX):]: v.to(self.device) for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
        if self.ema is not None:
            if not ema:
                raise ValueError(f"{path} holds no EMA weights, but ema_decay is {self.config.ema_decay}")
            self.ema.load_state_dict(ema)
        self.load_model_state({k: v.to(self.device) for k, v in tensors.items() if not k.startswith(EMA_PREFIX)})
        self.optimizer.load_state_dict(optimizer)
        self.schedule.load_state_dict(state["schedule"])
        if self.curriculum is not None:
            self.enter_stage(self.curriculum.stage_at(int(state["step"])))
        for name, stream in self.streams.items():
            stream.load_state_dict(state["data"][name])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.cpu_seconds = float(state.get("cpu_seconds", 0.0))
        restore_rng(*rng_of(state, path))
        if self.is_main_process():
            dropped = self.metrics.truncate_after(self.step)
            self.log(f"resumed from {path} at step {self.step}"
                     + (f" (dropped {dropped} log lines written after it)" if dropped else ""))

    # --------------------------------------------------------------------------------------------- training
    def _items(self, task_name: str, n: int) -> list[Any]:
        """The next `n` items of a task's stream: captions only, or full items when the task needs pixels."""
        task, stream = self.tasks[task_name], self.streams[task_name]
        data = self.train_data[task.data_kind]
        if not task.needs_pixels:
            return [caption_of(data, i) for i in stream.take(n)]
        from ..io import MediaError
        items: list[Any] = []
        failures = 0
        while len(items) < n:
            index = stream.take(1)[0]
            try:
                items.append(data[index])
                failures = 0
            except MediaError as exc:                      # passed the scan but fails to decode
                self.skipped_items += 1
                failures += 1
                self.log(f"warning: skipped an undecodable item ({self.skipped_items} so far): {exc}")
                if failures >= len(data):
                    raise ValueError(f"no item of the {task.data_kind} training data decodes ({exc})") from exc
        return items

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def clip_gradients(self) -> float:
        """Clip the global gradient L2 norm to `grad_clip` (0: no clipping); returns the norm before clipping."""
        return float(self._clip_gradients())

    def _clip_gradients(self) -> torch.Tensor:
        """`clip_gradients` without reading the norm on the host: the 0-d norm tensor."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)        # foreach (one launch) on CUDA by default
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm          # a sharded (DTensor) norm

    def next_batch(self, name: str, n: int) -> dict[str, Any]:
        """The next `n` items of task `name`'s stream as a collated batch: gathered on the device when the task's
        data is resident (`resident_data`), else fetched item by item and collated."""
        task = self.tasks[name]
        if name in self.resident:
            resident = self.resident[name]
            return resident.batch(*reversed(self.streams[name].take_both(n, resident.device)))
        return task.collate(self._items(name, n), self.device)

    def train_step(self) -> dict[str, Any]:
        """One optimizer update over `grad_accum` micro-batches; returns the step's log record.

        Every micro-batch counts equally, except that the micro-batches of one task share that task's part by
        their number of loss elements (tokens for text, samples for media): they are collated first, so when all
        micro-batches are of one task the accumulated gradient is exactly that of one big batch's mean loss.

        The update itself (`update`) never waits for the device: losses, the gradient norm and the expert balance stay
        tensors until one read here, which also checks that every loss is finite (on failure nothing is saved, so the
        last checkpoint is intact)."""
        lr, names, shares, losses, grad_norm, token_counts, balance = self.update()
        counted = [t.float().reshape(()) for t in token_counts if torch.is_tensor(t)]
        tensors = losses + [grad_norm.float().reshape(())] + counted
        if balance is not None:
            tensors.append(balance.float().reshape(()))
        values = torch.stack([t.to(grad_norm.device) for t in tensors]).tolist()     # the one host read
        loss_values = values[:len(losses)]
        for name, value in zip(names, loss_values):
            if not np.isfinite(value):
                raise FloatingPointError(f"the {name} loss is {value} at step {self.step}; the last checkpoint "
                                         f"is intact (lower lr, or check the data)")
        self.step += 1
        per_task: dict[str, list[float]] = {}
        for name, value in zip(names, loss_values):
            per_task.setdefault(name, []).append(value)
        tokens = sum(values[len(losses) + 1:len(losses) + 1 + len(counted)]) + \
            sum(float(t) for t in token_counts if not torch.is_tensor(t))
        record = {"step": self.step, "kind": "train", "loss": sum(v * s for v, s in zip(loss_values, shares)),
                  "lr": lr, "grad_norm": values[len(losses)], "tokens": tokens}
        record.update({f"loss/{k}": sum(v) / len(v) for k, v in per_task.items()})
        if balance is not None:
            record["expert_load_max_over_mean"] = values[-1]
        return record

    def update(self) -> tuple[float, list[str], list[float], list[torch.Tensor], torch.Tensor, list[Any],
                              torch.Tensor | None]:
        """The update of `train_step` without any host read: (lr, task names, loss shares, losses, gradient norm,
        token counts, expert balance), the values still on the device."""
        cfg = self.config
        self.model.train()
        if self.curriculum is not None:
            self.enter_stage(self.curriculum.stage_at(self.step))
        lr = self.schedule.apply(self.optimizer)
        micro_batches = []
        for micro in range(cfg.grad_accum):
            name = self.mix.choose(self.step, micro)
            batch = self.next_batch(name, cfg.micro_batch_size)
            micro_batches.append((name, batch, float(self.tasks[name].weight(batch))))
        count = {n: sum(1 for m, _, _ in micro_batches if m == n) for n, _, _ in micro_batches}
        elements = {n: sum(w for m, _, w in micro_batches if m == n) for n, _, _ in micro_batches}
        losses, shares, token_counts = [], [], []
        for name, batch, w in micro_batches:
            share = count[name] / cfg.grad_accum * w / elements[name]
            with self._autocast():
                loss, stats = self.tasks[name].loss(self.model, batch)
            (loss * share).backward()
            self.loads.collect()
            losses.append(loss.detach().float())
            shares.append(share)
            token_counts.append(stats.get("tokens", 0.0))
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        balance = self.loads.apply() if cfg.router_bias_update else self.loads.reset()
        self.schedule.advance()
        return lr, [n for n, _, _ in micro_batches], shares, losses, grad_norm, token_counts, balance

    def averaged(self):
        """A context in which the model holds its EMA weights (when `ema_decay > 0`; else the weights as trained)."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Run every evaluator on the current weights (the EMA weights when `ema_decay > 0`); training RNG, weights,
        router biases and mode are left unchanged."""
        was_training = self.model.training
        self.model.eval()
        results: dict[str, float] = {}
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._autocast(), self.averaged():
            for evaluator in self.evaluators:
                results.update({f"eval/{k}": float(v) for k, v in evaluator(self).items()})
        self.loads.reset()
        self.model.train(was_training)
        return results

    def _finish_log(self) -> None:
        if self.is_main_process():
            records = read_metrics(self.metrics.path)
            if any(r.get("kind") == "train" for r in records):
                plot_metrics(records, self.out / "metrics.png")
            if learning_curve_panels(records):                # the scorer evaluators ran
                plot_learning_curve(records, self.out / "learning_curve.png")

    def export(self) -> Path | None:
        """Write the final weights for inference: a language-model run writes `out/model/` (Hugging Face layout +
        tokenizer.json, `convert.checkpoint.load_pretrained` reads it); a unified-model run writes `out/pipeline/`,
        a saved pipeline (model, autoencoder, tokenizer, flow scheduler) that every `multimodal.pipelines` class loads.
        With `ema_decay > 0` the exported weights are the EMA weights."""
        if not self.is_main_process():
            return None
        if self.trains_media:
            from .scoring import generation_pipeline
            with self.averaged():
                return generation_pipeline(self, "image").save_pretrained(self.out / "pipeline")
        from ..convert.checkpoint import save_pretrained
        target = self.out / "model"
        with self.averaged():
            save_pretrained(self.model, target)
        self.tokenizer.save(target / "tokenizer.json")
        return target

    def train(self) -> TrainResult:
        """Train until `max_steps` updates, `max_time` seconds or `stop_requested`; checkpoint, plot and export."""
        from tqdm.auto import tqdm

        cfg = self.config
        start, last_eval, last_loss = time.perf_counter(), {}, None
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and self.is_main_process()))
        stop_reason = "max_steps"
        try:
            while self.step < cfg.max_steps:
                if cfg.max_time and time.perf_counter() - start >= cfg.max_time:
                    stop_reason = "max_time"
                    break
                if self.stop_requested:
                    stop_reason = "stop_requested"
                    break
                t0, c0 = time.perf_counter(), time.process_time()
                record = self.train_step()
                dt = time.perf_counter() - t0
                self.train_seconds += dt
                self.cpu_seconds += time.process_time() - c0
                record.update(steps_per_s=1.0 / dt, tokens_per_s=record["tokens"] / dt,
                              elapsed_s=self.train_seconds)
                last_loss = record["loss"]
                if self.is_main_process() and cfg.log_every and self.step % cfg.log_every == 0:
                    self.metrics.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                tok_s=f"{record['tokens_per_s']:.0f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    last_eval = self._eval_and_log()
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
                    self._finish_log()
        finally:
            bar.close()
        if self.step != self._last_saved:
            if not cfg.eval_every or self.step % cfg.eval_every:
                last_eval = self._eval_and_log()
            self.save()
        self._finish_log()
        if stop_reason == "max_steps":
            self.export()
        ckpt = latest_checkpoint(self.out / "checkpoints")
        return TrainResult(self.step, stop_reason, last_loss, last_eval, ckpt, self.train_seconds)

    def _eval_and_log(self) -> dict[str, float]:
        results = self.evaluate()
        if results and self.is_main_process():
            # the learning curve's x axis: training time so far (updates only: evaluation and checkpoints excluded)
            self.metrics.write({"step": self.step, "kind": "eval", "train_minutes": self.train_seconds / 60,
                                "cpu_minutes": self.cpu_seconds / 60, **results})
            self.log(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items())))
        return results

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> str:
        """One line about the run, for the CLI."""
        tasks = ", ".join(f"{n} {self.config.tasks[n]:g}" for n in self.mix.names)
        return (f"{type(self.model).__name__} with {self.num_parameters / 1e6:.3f}M parameters, tasks ({tasks}), "
                f"{self.config.batch_size} samples per update, step {self.step}/{self.config.max_steps}, "
                f"device {self.device}, {'bf16 autocast' if self.amp_dtype else 'fp32'}")


__all__ = ["Trainer", "TrainResult", "Evaluator", "seed_everything", "autocast_dtype"]
