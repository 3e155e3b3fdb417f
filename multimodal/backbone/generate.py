"""Greedy / sampled decoding with the backbone's caches: prefill once, then one token per step.

Small free functions in the style of gpt-fast's `generate.py`; the text head (decoders/text.py) builds sampling
strategies on top of `decode_step`.
"""

from __future__ import annotations

import torch

from .cache import BackboneCache
from .transformer import Transformer


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] 1/0 mask -> positions [B, S] counting each row's own tokens (0 at left padding), the numbering
    transformers' `generate` uses. An alternative to the default storage index for callers that want every row
    to start at position 0; decoding must then continue each row's count."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).masked_fill(attention_mask == 0, 0)


@torch.no_grad()
def prefill(model: Transformer, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, BackboneCache]:
    """input_ids [B, N] -> (logits of the last position [B, vocab], filled cache)."""
    cache = model.new_cache()
    out = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, logits_to_keep=1)
    return out.logits[:, -1], cache


@torch.no_grad()
def decode_step(model: Transformer, token: torch.Tensor, cache: BackboneCache,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """token [B] -> logits [B, vocab] for the next position."""
    out = model(token[:, None], attention_mask=attention_mask, position_ids=position_ids, cache=cache)
    return out.logits[:, -1]


@torch.no_grad()
def greedy_generate(model: Transformer, input_ids: torch.Tensor, max_new_tokens: int,
                    attention_mask: torch.Tensor | None = None, eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy continuation. input_ids [B, N] (left-padded when `attention_mask` marks padding) -> [B, N + new].

    Rows that emit `eos_token_id` keep emitting it. Positions are storage indices (the model's default): compressed
    entries are placed at their windows' storage positions, so queries numbered the same way see them at the right
    relative distance, and RoPE makes the left padding's constant shift of a row irrelevant."""
    b = input_ids.shape[0]
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    logits, cache = prefill(model, input_ids, mask)
    tokens = [input_ids]
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    for _ in range(max_new_tokens):
        nxt = logits.argmax(dim=-1)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        tokens.append(nxt[:, None])
        if len(tokens) - 1 == max_new_tokens or (eos_token_id is not None and bool(done.all())):
            break
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        logits = decode_step(model, nxt, cache, mask)
    return torch.cat(tokens, dim=1)
