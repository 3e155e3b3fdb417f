"""sparse-multimodal: a DeepSeek-V4-style unified multimodal model in PyTorch."""

__version__ = "0.1.0"

__all__ = ["__version__"]
