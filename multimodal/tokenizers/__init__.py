"""tokenizers subpackage of multimodal."""
