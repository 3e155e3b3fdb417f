"""Diffusers-style pipelines over one unified model: text-to-image, text-to-video, captioning, text generation."""

from .base import BUILTIN_MODELS, ModelNotFoundError, MultimodalPipeline
from .image_caption import ImageCaptionPipeline
from .output import ImagePipelineOutput, TextPipelineOutput, VideoPipelineOutput, export_to_video
from .rerank import MAX_CANDIDATES, ScoreOutput
from .text_generation import TextGenerationPipeline
from .text_to_image import TextToImagePipeline
from .text_to_video import TextToVideoPipeline
from .video_caption import VideoCaptionPipeline

__all__ = [
    "BUILTIN_MODELS",
    "ImageCaptionPipeline",
    "ImagePipelineOutput",
    "MAX_CANDIDATES",
    "ModelNotFoundError",
    "MultimodalPipeline",
    "ScoreOutput",
    "TextGenerationPipeline",
    "TextPipelineOutput",
    "TextToImagePipeline",
    "TextToVideoPipeline",
    "VideoCaptionPipeline",
    "VideoPipelineOutput",
    "export_to_video",
]
