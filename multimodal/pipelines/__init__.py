"""pipelines subpackage of multimodal."""
