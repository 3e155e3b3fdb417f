"""Routed-expert SwiGLU FFN: sorted grouped GEMMs in Triton, with a per-expert-loop reference."""

from .naive import naive_moe_ffn
from .op import moe_ffn

__all__ = ["moe_ffn", "naive_moe_ffn"]
