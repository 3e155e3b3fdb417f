"""kernels subpackage of multimodal."""
