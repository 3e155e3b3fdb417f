"""Training the DSA lightning indexer (DeepSeek-V3.2 report §2.1; ../shared/reference/attention.md §2.4).

1. Dense warm-up: attention stays dense, every parameter but the indexers' is frozen, and the indexer learns to
   match the main attention: for query t the target `p[t, :]` is the attention probability summed over heads and
   L1-normalised over the keys, and the loss is `sum_t KL(p[t, :] || softmax(I[t, :]))` (mean over queries here).
2. Sparse stage: top-k selection is on and everything trains; the indexer sees DETACHED inputs, so it learns only
   from its KL loss (now restricted to the selected set S_t: `KL(p[t, S_t] || softmax(I[t, S_t]))`) and the main
   model only from the language-model loss (the top-k choice is not differentiable anyway).

The gradient of the loss with respect to the index logits is `(softmax(I) - p) / n_queries` on the (selected,
visible) keys and 0 elsewhere (tested).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..backbone.dsa import DSA

Stage = Literal["dense_warmup", "sparse"]


def attention_target(probs: torch.Tensor) -> torch.Tensor:
    """Main-attention probabilities [B, H, S, L] -> head-summed, L1-normalised target [B, S, L] (rows of zeros stay 0)."""
    summed = probs.float().sum(dim=1)                                                 # [B, S, L]
    return summed / summed.sum(dim=-1, keepdim=True).clamp(min=1e-30)


def indexer_kl(index_scores: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over query rows of KL(p || softmax(I)) over the keys where `mask` is True.

    index_scores [B, S, L] (logits I, any finite values where masked in), target [B, S, L] (>= 0; renormalised over
    the mask), mask [B, S, L] bool. Rows with no True entry are skipped. -> scalar.
    """
    logits = index_scores.float().masked_fill(~mask, float("-inf"))
    log_q = torch.log_softmax(logits, dim=-1)
    p = target.float().masked_fill(~mask, 0.0)
    p = p / p.sum(dim=-1, keepdim=True).clamp(min=1e-30)
    terms = torch.where(p > 0, p * (p.clamp(min=1e-30).log() - log_q), torch.zeros_like(p))
    rows = mask.any(dim=-1)                                                           # [B, S]
    kl = terms.sum(dim=-1)
    return kl[rows].sum() / rows.sum().clamp(min=1)


def dsa_layers(model: nn.Module) -> list[DSA]:
    return [m for m in model.modules() if isinstance(m, DSA)]


def set_indexer_stage(model: nn.Module, stage: Stage) -> None:
    """Configure every DSA layer (and parameter freezing) for one of the two indexer-training stages."""
    if stage not in ("dense_warmup", "sparse"):
        raise ValueError(f"stage must be 'dense_warmup' or 'sparse', got {stage!r}")
    layers = dsa_layers(model)
    if not layers:
        raise ValueError("the model has no DSA layers (layer type 'dsa')")
    indexer_params = {id(p) for layer in layers for p in layer.indexer.parameters()}
    for p in model.parameters():
        p.requires_grad_(stage == "sparse" or id(p) in indexer_params)
    for layer in layers:
        layer.record = True
        layer.dense_attention = stage == "dense_warmup"
        layer.detach_indexer_input = stage == "sparse"


def dsa_indexer_loss(model: nn.Module) -> torch.Tensor:
    """Sum over DSA layers of the indexer KL for the last forward (run `set_indexer_stage` first).

    Dense warm-up: over every visible key; sparse stage: over the selected visible keys. The target is detached.
    """
    total = None
    for layer in dsa_layers(model):
        if layer.last_index_scores is None or layer.last_probs is None:
            raise RuntimeError("no recorded DSA forward: call set_indexer_stage(model, ...) before the forward pass")
        mask = layer.last_visible if layer.dense_attention else layer.last_visible & layer.last_selection
        loss = indexer_kl(layer.last_index_scores, attention_target(layer.last_probs.detach()), mask)
        total = loss if total is None else total + loss
    return total
