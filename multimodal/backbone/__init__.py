"""backbone subpackage of multimodal."""
