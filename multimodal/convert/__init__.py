"""convert subpackage of multimodal."""
