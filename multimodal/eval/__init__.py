"""eval subpackage of multimodal."""
