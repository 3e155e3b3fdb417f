"""Training: the trainer and its config, presets, schedule, checkpoints, metrics and task mix.

    from multimodal.training import Trainer, train_preset
    Trainer(train_preset("debug"), out="runs/lm").train()
"""

from .checkpoint import CheckpointWriteError, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TASK_NAMES, TRAIN_PRESETS, TrainConfig, train_preset
from .learning_curve import plot_learning_curve
from .metrics import MetricsLog, plot_metrics, read_metrics
from .schedule import WarmupCosine
from .stem_pretraining import StemPretrainConfig, pretrain_stem
from .trainer import Trainer, TrainResult

__all__ = [
    "CheckpointWriteError",
    "MetricsLog",
    "StemPretrainConfig",
    "TASK_NAMES",
    "TRAIN_PRESETS",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "WarmupCosine",
    "latest_checkpoint",
    "load_checkpoint",
    "plot_learning_curve",
    "plot_metrics",
    "pretrain_stem",
    "read_metrics",
    "save_checkpoint",
    "train_preset",
]
