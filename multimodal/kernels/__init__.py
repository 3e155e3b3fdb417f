"""Hot-path ops of the backbone: each has a readable PyTorch reference and a Triton kernel.

Public ops (dispatch policy in :mod:`multimodal.kernels.dispatch`, env ``MULTIMODAL_KERNELS``):

- :func:`moe_ffn` routed-expert SwiGLU FFN (sorted grouped GEMMs)
- :func:`sparse_mqa` shared-KV multi-query attention over selected entries, with attention sinks
- :func:`indexer_topk` lightning-indexer scores + top-k, chunked over queries
- :func:`mhc_pre` / :func:`mhc_post` manifold-constrained hyper-connection coefficients and mixing
- :func:`engram_gather` Engram n-gram hashing of token ids fused with the memory-table gather
"""

from .dispatch import KernelUnavailableError, use_triton
from .engram import engram_gather
from .indexer import indexer_topk
from .mhc import mhc_post, mhc_pre
from .moe import moe_ffn
from .sparse_attention import sparse_mqa

__all__ = ["moe_ffn", "sparse_mqa", "indexer_topk", "mhc_pre", "mhc_post", "engram_gather", "use_triton", "KernelUnavailableError"]
