"""decoders subpackage of multimodal."""
