"""sparse-multimodal: a DeepSeek-V4-style unified multimodal model in PyTorch."""

__version__ = "0.1.0"

from .backbone.cache import BackboneCache
from .backbone.count import ParameterCount, count_parameters
from .backbone.generate import decode_step, greedy_generate, prefill
from .backbone.transformer import Transformer, TransformerOutput
from .config import (AttentionConfig, BackboneConfig, EngramConfig, HyperConfig, MoEConfig, NSAConfig, PRESETS,
                     RopeScaling, preset)
from .convert.checkpoint import CheckpointError, load_pretrained, save_pretrained
from .convert.hf_config import from_hf_config, to_hf_config

# tokenizers and media I/O
from .io import MediaError, VideoWriter, iter_frames, probe_video, read_image, read_video, write_image, write_video
from .tokenizers.autoencoder import CausalAutoencoder
from .tokenizers.config import AutoencoderConfig
from .tokenizers.image import ImageTokenizer
from .tokenizers.text import TextTokenizer
from .tokenizers.video import VideoTokenizer, VisualTokens

# the shapes-and-digits world (data) and its scorer (eval)
from .data.datasets import WorldDataConfig, WorldDataset, collate_world
from .data.render import render_sample
from .data.world import WorldSample, sample_image, sample_video
from .eval.captions import parse_caption
from .eval.metrics import score_captions
from .eval.quality import QualitySettings, quality_report
from .eval.scene import parse_frames
from .eval.scorer import score_frames

# the unified model, its heads' configs, and the pipelines
from .decoders.flow import FlowHeadConfig
from .decoders.text import GenerationConfig
from .model import ModelConfig, Segment, UnifiedModel, model_preset
from .pipelines import (
    ImageCaptionPipeline,
    TextGenerationPipeline,
    TextToImagePipeline,
    TextToVideoPipeline,
    VideoCaptionPipeline,
    export_to_video,
)

__all__ = [
    "__version__",
    # backbone
    "Transformer", "TransformerOutput", "BackboneCache", "prefill", "decode_step", "greedy_generate",
    "count_parameters", "ParameterCount",
    # configs
    "BackboneConfig", "AttentionConfig", "MoEConfig", "HyperConfig", "EngramConfig", "NSAConfig", "RopeScaling",
    "PRESETS", "preset",
    # checkpoints
    "load_pretrained", "save_pretrained", "CheckpointError", "from_hf_config", "to_hf_config",
    # tokenizers and media
    "TextTokenizer", "AutoencoderConfig", "CausalAutoencoder", "ImageTokenizer", "VideoTokenizer", "VisualTokens",
    "MediaError", "read_video", "iter_frames", "probe_video", "write_video", "VideoWriter", "read_image",
    "write_image",
    # world and scorer
    "WorldDataConfig", "WorldDataset", "WorldSample", "collate_world", "parse_caption", "parse_frames",
    "render_sample", "sample_image", "sample_video", "score_captions", "score_frames", "QualitySettings",
    "quality_report",
    # unified model, heads, pipelines
    "UnifiedModel", "ModelConfig", "Segment", "model_preset", "FlowHeadConfig", "GenerationConfig",
    "TextToImagePipeline", "TextToVideoPipeline", "VideoCaptionPipeline", "ImageCaptionPipeline",
    "TextGenerationPipeline", "export_to_video",
]
