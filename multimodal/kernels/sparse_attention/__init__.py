"""Sparse shared-KV multi-query attention over selected entries (FlashMLA-style), Triton + reference."""

from .naive import naive_sparse_mqa
from .op import sparse_mqa

__all__ = ["sparse_mqa", "naive_sparse_mqa"]
