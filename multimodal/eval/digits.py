"""The scorer's digit classifier: a small CNN over 16×16 glyph crops, trained on the training glyphs.

Training data comes from the world itself: every training glyph (sklearn index % 5 != 0) is drawn by
the world's renderer at both sizes in all eight colours, then cut out by the scene parser exactly as a
generated image would be (``multimodal.eval.scene.digit_crop``). Three quarters of the frames also go
through an H.264 round trip, so the classifier has seen codec artefacts, and at every epoch most crops are bent
by a small random affine map (rotation, shear, scale, shift: ``augment_crops``), so that it reads handwriting it
has not seen (the test glyphs) rather than remembering the training glyphs. Training is seeded, single-threaded and
takes well under a minute on one CPU core; the result ships as ``multimodal/assets/digit_classifier.safetensors``.

Regenerate the shipped weights (prints the test-glyph accuracy and the training time)::

    python -m multimodal.eval.digits --out multimodal/assets/digit_classifier.safetensors
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from multimodal.data.files import mp4_round_trip
from multimodal.data.glyphs import glyph_labels, split_glyph_indices
from multimodal.data.render import draw_object
from multimodal.data.world import COLOURS, FRAME_SIZE, SIZES, WorldObject
from multimodal.eval.scene import segment_frame

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "digit_classifier.safetensors"


@dataclass
class DigitTrainingConfig:
    """How the digit classifier is trained (all defaults give the shipped weights)."""

    seed: int = 0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    colours_per_glyph: int = 8                # every glyph in every colour (magenta glyphs suffer most from yuv420p)
    mp4_fraction: float = 0.75
    width: int = 16
    augment_fraction: float = 0.75            # share of crops bent by a random affine map at each epoch
    max_rotation: float = 12.0                # degrees
    max_shear: float = 0.15
    max_scale: float = 0.1                    # zoom in [1 - max_scale, 1 + max_scale]
    max_shift: float = 1.0                    # crop pixels (of CLASSIFIER_SIDE)

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 1 <= self.colours_per_glyph <= len(COLOURS):
            raise ValueError(f"colours_per_glyph must be in 1..{len(COLOURS)}, got {self.colours_per_glyph}")
        if not 0.0 <= self.mp4_fraction <= 1.0:
            raise ValueError(f"mp4_fraction must be in [0, 1], got {self.mp4_fraction}")
        if not 0.0 <= self.augment_fraction <= 1.0:
            raise ValueError(f"augment_fraction must be in [0, 1], got {self.augment_fraction}")
        for name in ("max_rotation", "max_shear", "max_scale", "max_shift"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class DigitNet(nn.Module):
    """Two conv blocks and an MLP: (N, 1, 16, 16) coverage -> (N, 10) logits."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, width, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 2 width, 4, 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))  # (N, 10)


class DigitClassifier:
    """Reads digit crops (see ``scene.digit_crop``) with a :class:`DigitNet`; CPU, no gradients."""

    def __init__(self, net: DigitNet) -> None:
        self.net = net.eval()

    @torch.no_grad()
    def predict(self, crops: np.ndarray) -> list[tuple[int, float]]:
        """(N, 16, 16) float crops -> [(digit, probability), ...].

        The net is tiny, so it runs on one thread: waking torch's intra-op pool costs far more than
        the work (40x slower on a busy 2-core machine). The previous thread count is restored.
        """
        x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))[:, None]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            probs = self.net(x).softmax(-1)
        finally:
            torch.set_num_threads(threads)
        conf, label = probs.max(-1)
        return [(int(a), float(b)) for a, b in zip(label, conf)]

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Write the weights as safetensors, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(tmp), metadata=metadata or {})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_WEIGHTS) -> "DigitClassifier":
        """Load safetensors weights (never pickle)."""
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise FileNotFoundError(f"digit classifier weights not found: {path}")
        state = load_file(str(path))
        net = DigitNet(width=int(state["conv1.weight"].shape[0]))
        net.load_state_dict(state)
        return cls(net)


@lru_cache(maxsize=1)
def default_classifier() -> DigitClassifier:
    """The shipped classifier (loaded once)."""
    return DigitClassifier.load(DEFAULT_WEIGHTS)


def glyph_crops(test: bool, colours_per_glyph: int = 4, mp4_fraction: float = 0.75, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the training (``test=False``) or test glyphs as the scene parser cuts them out.

    Every glyph is drawn at both sizes in ``colours_per_glyph`` colours at a random position; a
    ``mp4_fraction`` share of the frames is read back after an H.264 round trip. Returns
    ``(crops (N, 16, 16) float32, labels (N,) int64)``.
    """
    rng = np.random.default_rng([seed, int(test)])
    indices = split_glyph_indices(test)
    labels = glyph_labels()
    frames, targets = [], []
    for index in indices:
        for size in SIZES:
            for colour in rng.permutation(list(COLOURS))[:colours_per_glyph]:
                px = SIZES[size]
                x, y = (int(v) for v in rng.integers(2, FRAME_SIZE - 2 - px + 1, size=2))
                frame = np.zeros((FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
                digit = int(labels[index])
                draw_object(frame, WorldObject(str(colour), f"digit {digit}", size, x, y, glyph=int(index)))
                frames.append(frame)
                targets.append(digit)
    frames_arr = np.stack(frames)
    coded = rng.random(len(frames_arr)) < mp4_fraction
    if coded.any():
        frames_arr[coded] = mp4_round_trip(frames_arr[coded])
    crops, kept = [], []
    for frame, digit in zip(frames_arr, targets):
        blobs = [b for b in segment_frame(frame) if b.crop is not None]
        if len(blobs) == 1:  # one digit found, as drawn
            crops.append(blobs[0].crop)
            kept.append(digit)
    return np.stack(crops).astype(np.float32), np.asarray(kept, dtype=np.int64)


def augment_crops(x: torch.Tensor, config: DigitTrainingConfig, generator: torch.Generator) -> torch.Tensor:
    """Crops (N, 1, S, S) -> the same crops, a ``config.augment_fraction`` share of them warped by a random affine
    map (rotation, shear, zoom and shift drawn uniformly within the config's bounds; bilinear, zeros outside)."""
    if config.augment_fraction == 0:
        return x                      # no draws from `generator`: the same shuffles as training without warps
    n, side = x.shape[0], x.shape[-1]
    u = torch.rand(n, 6, generator=generator) * 2 - 1                            # [N, 6] in [-1, 1]
    angle = u[:, 0] * config.max_rotation * torch.pi / 180
    shear = u[:, 1] * config.max_shear
    zoom = 1 + u[:, 2] * config.max_scale
    shift = u[:, 3:5] * config.max_shift * 2 / side                               # in grid units ([-1, 1] = crop)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin + shear * cos, shift[:, 0]], -1),
                         torch.stack([sin, cos + shear * sin, shift[:, 1]], -1)], 1)   # [N, 2, 3]
    warped = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    keep = (u[:, 5] * 0.5 + 0.5 >= config.augment_fraction).view(n, 1, 1, 1)
    return torch.where(keep, x, warped)


def train_digit_classifier(config: DigitTrainingConfig | None = None) -> DigitClassifier:
    """Train a classifier on the training glyphs, deterministically, on the CPU (one thread)."""
    config = config or DigitTrainingConfig()
    x_np, y_np = glyph_crops(False, config.colours_per_glyph, config.mp4_fraction, config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same summation order, the same weights, every run
    try:
        gen = torch.Generator().manual_seed(config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            net = DigitNet(config.width)
        x, y = torch.from_numpy(x_np)[:, None], torch.from_numpy(y_np)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        steps = config.epochs * ((len(x) + config.batch_size - 1) // config.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
        net.train()
        for _ in range(config.epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), config.batch_size):
                idx = order[i : i + config.batch_size]
                loss = F.cross_entropy(net(augment_crops(x[idx], config, gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    return DigitClassifier(net)


def accuracy(classifier: DigitClassifier, crops: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of crops read correctly."""
    predicted = np.array([d for d, _ in classifier.predict(crops)])
    return float((predicted == labels).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the scorer's digit classifier on the training glyphs.")
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="where to write the safetensors weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DigitTrainingConfig.epochs)
    parser.add_argument("--augment-fraction", type=float, default=DigitTrainingConfig.augment_fraction,
                        help="share of crops warped by a random affine map at each epoch (0: no augmentation)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    clf = train_digit_classifier(DigitTrainingConfig(seed=args.seed, epochs=args.epochs,
                                                     augment_fraction=args.augment_fraction))
    seconds = time.perf_counter() - start
    clean = accuracy(clf, *glyph_crops(True, colours_per_glyph=4, mp4_fraction=0.0, seed=1))
    coded = accuracy(clf, *glyph_crops(True, colours_per_glyph=4, mp4_fraction=1.0, seed=1))
    meta = {"train_seconds": f"{seconds:.1f}", "test_accuracy": f"{clean:.4f}", "test_accuracy_mp4": f"{coded:.4f}"}
    clf.save(args.out, metadata=meta)
    print(f"trained in {seconds:.1f} s; test-glyph accuracy {clean:.4f} (renders), {coded:.4f} (after mp4) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
