"""Engram retrieval: n-gram hashing of token ids and the table gather, fused in Triton, with a PyTorch reference."""

from .naive import naive_engram_gather, naive_ngram_rows
from .op import engram_gather

__all__ = ["engram_gather", "naive_engram_gather", "naive_ngram_rows"]
