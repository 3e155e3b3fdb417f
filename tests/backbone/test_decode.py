"""Incremental decoding equals a full forward: prefill N tokens, then M one at a time (or in chunks), on a padded
batch whose rows have different lengths. Tolerance 1e-4 absolute on logits of magnitude ~1-10 (fp32)."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone.generate import positions_from_mask
from multimodal.config import preset

from .random_model import random_model

TYPES = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]


def _run(cfg, chunks: list[int], seed: int = 0, count_from_first_token: bool = False):
    model = random_model(cfg, seed)
    total = sum(chunks)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (3, total), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4], mask[1, :1] = 0, 0
    pos = torch.arange(ids.shape[1]).expand_as(ids)      # storage index: the default of both models
    if count_from_first_token:
        pos = positions_from_mask(mask)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=pos).logits
        cache, start, errs = model.new_cache(), 0, []
        for n in chunks:
            part = model(ids[:, start:start + n], attention_mask=mask[:, :start + n],
                         position_ids=pos[:, start:start + n], cache=cache).logits
            real = mask[:, start:start + n].bool()
            errs.append((part - full[:, start:start + n])[real].abs().max().item())
            start += n
    return max(errs)


@pytest.mark.parametrize("layer_type", TYPES + ["mixed"])
def test_prefill_then_token_by_token_equals_full_forward(layer_type):
    cfg = preset("debug").replace(num_nextn_predict_layers=0)
    if layer_type != "mixed":
        cfg = cfg.replace(layer_types=[layer_type] * cfg.num_hidden_layers)
    assert _run(cfg, [13] + [1] * 14) < 1e-4


def test_chunked_prefill_equals_full_forward():
    cfg = preset("debug").replace(num_nextn_predict_layers=0)
    assert _run(cfg, [5, 7, 1, 6, 3, 1, 1]) < 1e-4


def test_decode_without_mhc_or_hash_routing():
    cfg = preset("debug").replace(num_nextn_predict_layers=0, mlp_layer_types=["moe"] * 3,
                                  hyper={"enabled": False, "hc_mult": 1})
    assert _run(cfg, [9] + [1] * 8) < 1e-4


def test_window_longer_than_the_sequence_and_rate_one_windows():
    cfg = preset("debug").replace(num_nextn_predict_layers=0,
                                  attention={"sliding_window": 64, "compress_rate_csa": 1, "index_topk": 1})
    assert _run(cfg, [3] + [1] * 6) < 1e-4


def test_cache_holds_only_the_window_and_the_remainder():
    cfg = preset("debug").replace(num_nextn_predict_layers=0)
    model = random_model(cfg)
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, cfg.vocab_size, (2, 23)), cache=cache)
    w, csa, hca = cfg.attention.sliding_window, cfg.attention.compress_rate_csa, cfg.attention.compress_rate_hca
    for state, t in zip(cache.layers, cfg.layer_types):
        assert state.window.keys.shape[1] == w - 1          # the last window - 1 tokens, not all 23
        if t == "compressed_sparse_attention":
            assert state.compressor.entries.shape[1] == 23 // csa and state.compressor.buffer_kv.shape[1] == 23 % csa
            assert state.indexer.entries.shape[1] == 23 // csa
        if t == "heavily_compressed_attention":
            assert state.compressor.entries.shape[1] == 23 // hca and state.compressor.buffer_kv.shape[1] == 23 % hca


def test_positions_counted_from_each_rows_first_token_decode_consistently():
    cfg = preset("debug").replace(num_nextn_predict_layers=0)
    assert _run(cfg, [11] + [1] * 9, count_from_first_token=True) < 1e-4
