"""The built-in model `shapes`: shipped inside the package, loaded by default, V4 inside, and still as good as published.

`test_quality_subset` recomputes a fixed subset of the quality table (docs/quality.md: the first 64 images and 32
videos of the test and held-out splits, default sampling settings, sample i seeded with i) and fails when a figure
drops more than `MARGIN` under what the shipped weights measured on that same subset (`MEASURED`). The figures are
the ones the shipped model does measurably well enough to guard: caption exact match and slot F1, and for generation
`count_ok` (the right number of objects) and, on the in-distribution test split, all-clauses accuracy (~30%: a floor
6 points under it still fails a model that stopped drawing the prompt).
"""

from __future__ import annotations

import json

import pytest
import torch

from multimodal.eval.quality import QualitySettings, quality_report
from multimodal.pipelines import TextToImagePipeline
from multimodal.pipelines.base import builtin_model_path

MAX_BYTES = 50 * 2**20
SUBSET = QualitySettings(images=64, videos=32, seed=0, autoencoder_images=64, autoencoder_videos=16)
# (split, task, figure) -> measured on SUBSET by the shipped weights (2-core CPU, torch 2.14.1)
MEASURED = {
    ("test", "text_to_image", "accuracy"): 0.328,
    ("test", "text_to_image", "count_ok"): 0.625,
    ("test", "text_to_video", "count_ok"): 0.5,
    ("test", "image_to_text", "exact"): 0.859,
    ("test", "image_to_text", "slot_f1"): 0.922,
    ("test", "video_to_text", "exact"): 0.969,
    ("test", "video_to_text", "slot_f1"): 0.984,
    ("held-out", "text_to_image", "count_ok"): 0.672,
    ("held-out", "video_to_text", "slot_f1"): 0.906,
}
MARGIN = 0.06          # a few points: 4 of 64 samples, 2 of 32


def test_shipped_inside_the_package_and_small():
    path = builtin_model_path("shapes")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size <= MAX_BYTES, f"{path} holds {size / 2**20:.1f} MiB"
    names = {f.name for f in path.rglob("*") if f.is_file()}
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))}     # safetensors and JSON only
    config = json.loads((path / "model" / "config.json").read_text())["backbone"]
    assert {"sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"} <= set(
        config["layer_types"]), config["layer_types"]                                   # V4 hybrid attention
    assert config["hyper"]["enabled"] and config["hyper"]["hc_mult"] > 1                 # mHC
    assert config["moe"]["n_routed_experts"] > config["moe"]["num_experts_per_tok"] > 0  # routed MoE


def test_loaded_by_default():
    pipe = TextToImagePipeline.from_pretrained()
    image = pipe("a large red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                 output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    # its decoding defaults: the world's captions never hold one token twice in a row (docs/quality.md)
    assert pipe.model.generation_config.to_diff_dict() == {"no_immediate_repeat": True}


@pytest.fixture(scope="module")
def subset_report():
    return quality_report("shapes", SUBSET)


@pytest.mark.parametrize("key", sorted(MEASURED), ids=lambda k: "/".join(k))
def test_quality_subset(subset_report, key):
    split, task, metric = key
    value = subset_report["splits"][split][task]["overall"][metric]
    floor = MEASURED[key] - MARGIN
    assert value >= floor, f"{split} {task} {metric}: {value:.3f} < {floor:.3f} (shipped weights measured " \
                           f"{MEASURED[key]:.3f} on this subset); failures: {subset_report['failures'][split][task][:5]}"


def test_autoencoder_psnr_subset(subset_report):
    ae = subset_report["autoencoder"]
    assert ae["image_psnr"] >= 32.3 and ae["video_psnr"] >= 30.9, ae        # measured 32.9 and 31.5 dB
