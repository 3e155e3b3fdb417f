"""Lightning-indexer scores (Triton, chunked) and top-k selection, with a PyTorch reference."""

from .naive import naive_indexer_scores, naive_indexer_topk
from .op import indexer_scores, indexer_topk

__all__ = ["indexer_topk", "indexer_scores", "naive_indexer_topk", "naive_indexer_scores"]
