"""The acceptance test of the backbone: transformers' DeepseekV4ForCausalLM (random weights, save_pretrained) read by
our loader gives the same logits on a padded batch and the same greedy continuations with caches.

Tolerance: max |ours - reference| / max |reference| <= 1e-4 in fp32 over the real (non-padding) positions.
The configs use 8 indexer heads: with very few heads, many ReLU index scores are exactly 0 and the reference's
`topk` breaks those ties arbitrarily (differently in prefill and decode); ours breaks them towards the earlier entry.
"""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone.generate import greedy_generate
from multimodal.convert.checkpoint import load_pretrained

from .hf_oracle import save_random_v4

CONFIGS = {
    # all three attention types, hash + learned routing, mHC n = 4, YaRN on the compressed layers
    "sliding-csa-hca/hash/mhc4": dict(),
    # mHC n = 1, CSA first, two hash layers, smaller top-k
    "csa-hca-sliding/hash2/mhc1": dict(hc_mult=1, index_topk=2,
                                       layer_types=["compressed_sparse_attention", "heavily_compressed_attention",
                                                    "sliding_attention"],
                                       mlp_layer_types=["hash_moe", "hash_moe", "moe"]),
    # 4 layers, learned routing only, 8 heads in 4 output groups, no YaRN, sigmoid scores
    "hca-csa-sliding-csa/learned/mhc4": dict(num_hidden_layers=4, num_attention_heads=8, o_groups=4,
                                             rope_parameters=None, scoring_func="sigmoid", index_topk=4,
                                             layer_types=["heavily_compressed_attention",
                                                          "compressed_sparse_attention", "sliding_attention",
                                                          "compressed_sparse_attention"],
                                             mlp_layer_types=["moe"] * 4),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param.replace("/", "_"))
    reference = save_random_v4(path, seed=len(request.param), **CONFIGS[request.param])
    return reference, load_pretrained(path)


def _batch(seed: int, length: int = 29):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0          # left padding of different lengths
    mask[2, :2] = 0
    return ids, mask


def test_logits_match_reference_on_padded_batch(pair):
    reference, ours = pair
    ids, mask = _batch(0)
    pos = torch.arange(ids.shape[1]).expand_as(ids)      # storage index: the default of both models
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    err = (got - expected)[real].abs().max() / expected[real].abs().max()
    assert err <= 1e-4, f"relative logit error {err:.2e}"


def test_greedy_generation_matches_reference(pair):
    reference, ours = pair
    ids, mask = _batch(1, length=11)
    with torch.no_grad():
        # positions = storage index, as our decoding numbers them (transformers would otherwise count from each
        # row's first real token during prefill but show every complete compressed entry while decoding)
        expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                      eos_token_id=None, position_ids=torch.arange(11).expand_as(ids))
    got = greedy_generate(ours, ids, 20, attention_mask=mask)
    assert got.shape == expected.shape == (3, 31)
    assert torch.equal(got, expected), f"first divergence at {(got != expected).nonzero()[:3].tolist()}"
