"""data subpackage of multimodal."""
