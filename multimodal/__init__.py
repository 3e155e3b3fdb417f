"""sparse-multimodal: a DeepSeek-V4-style unified multimodal model in PyTorch."""

__version__ = "0.1.0"

# the shapes-and-digits world (data) and its scorer (eval)
from multimodal.data.datasets import WorldDataConfig, WorldDataset, collate_world
from multimodal.data.render import render_sample
from multimodal.data.world import WorldSample, sample_image, sample_video
from multimodal.eval.captions import parse_caption
from multimodal.eval.metrics import score_captions
from multimodal.eval.scene import parse_frames
from multimodal.eval.scorer import score_frames

__all__ = [
    "__version__",
    "WorldDataConfig",
    "WorldDataset",
    "WorldSample",
    "collate_world",
    "parse_caption",
    "parse_frames",
    "render_sample",
    "sample_image",
    "sample_video",
    "score_captions",
    "score_frames",
]
