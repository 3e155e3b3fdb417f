"""io subpackage of multimodal."""
