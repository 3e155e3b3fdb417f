"""training subpackage of multimodal."""
