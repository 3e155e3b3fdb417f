"""Manifold-constrained hyper-connections: fused Triton coefficient/Sinkhorn/collapse and mixing ops."""

from .naive import mhc_coefficients, naive_mhc_post, naive_mhc_pre
from .op import mhc_post, mhc_pre

__all__ = ["mhc_pre", "mhc_post", "naive_mhc_pre", "naive_mhc_post", "mhc_coefficients"]
