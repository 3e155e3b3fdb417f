"""Parity with transformers' DeepseekV3ForCausalLM (MLA + V3 gate) and DeepseekV32ForCausalLM (MLA + DSA).

Random tiny configs with every parameter and buffer random (tests/backbone/hf_oracle.py), written by transformers'
`save_pretrained`, loaded by our `load_pretrained`. Tolerance: max |ours - theirs| / max |theirs| <= 1e-4 on
fp32 logits (measured ~1e-6); greedy generation with caches (prefill in MHA mode, decode in absorbed mode) must
give identical tokens, on left-padded batches.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from multimodal.backbone.generate import greedy_generate
from multimodal.convert.checkpoint import CheckpointError, load_pretrained, save_pretrained

from .hf_oracle import transformers
from .v3_oracle import save_random_v3

TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module", params=["v3", "v3-no-q-lora", "v3.2"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    overrides = {"q_lora_rank": None} if request.param == "v3-no-q-lora" else {}
    ref = save_random_v3(path, seed=3, dsa=request.param == "v3.2", **overrides)
    return request.param, path, ref, load_pretrained(path)


def padded_batch(seed: int, lengths: list[int], vocab: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), s), generator=g)
    mask = torch.zeros(len(lengths), s, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, s - n:] = 1
        ids[i, : s - n] = 0
    return ids, mask


def test_config_and_layer_types(pair):
    name, path, ref, ours = pair
    assert set(ours.config.layer_types) == {"dsa" if name == "v3.2" else "mla"}
    assert ours.config.mlp_layer_types == ["dense", "moe", "moe"]
    assert ours.config.moe.n_group == 4 and ours.config.moe.topk_group == 2
    # YaRN softmax-scale correction: (nope + rope)^-1/2 * mscale(4, 1)^2
    mscale = 0.1 * torch.log(torch.tensor(4.0)).item() + 1
    assert ours.layers[0].attn.scale == pytest.approx(16 ** -0.5 * mscale ** 2, rel=1e-6)


def test_logits_match(pair):
    name, _, ref, ours = pair
    ids = torch.randint(3, 96, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, mine = ref(ids).logits, ours(ids).logits
    assert rel_err(mine, theirs) < TOL, name


def test_padded_logits_match(pair):
    name, _, ref, ours = pair
    ids, mask = padded_batch(1, [11, 7, 4])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = ref(ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, attention_mask=mask, position_ids=positions).logits
    valid = mask.bool()
    assert rel_err(mine[valid], theirs[valid]) < TOL, name


def test_greedy_generation_matches_with_cache(pair):
    name, _, ref, ours = pair
    ids, mask = padded_batch(2, [9, 5])
    new = 8
    theirs = ref.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, min_new_tokens=new,
                          pad_token_id=0)
    mine = greedy_generate(ours, ids, new, attention_mask=mask)
    assert torch.equal(mine, theirs), f"{name}: {mine.tolist()} != {theirs.tolist()}"


def test_our_writer_loads_in_transformers(pair, tmp_path):
    name, _, ref, ours = pair
    save_pretrained(ours, tmp_path)
    cls = transformers.DeepseekV32ForCausalLM if name == "v3.2" else transformers.DeepseekV3ForCausalLM
    back = cls.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 96, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(back(ids).logits, ref(ids).logits) < TOL
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == (
        "deepseek_v32" if name == "v3.2" else "deepseek_v3")


def test_missing_indexer_weights_are_named(tmp_path):
    save_random_v3(tmp_path, seed=5, dsa=True, num_hidden_layers=2)
    tensors = load_file(tmp_path / "model.safetensors")
    dropped = {k: v for k, v in tensors.items() if "layers.1.self_attn.indexer.wk" not in k}
    save_file(dropped, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"indexer.*layers\.1\.attn\.indexer\.wk\.weight"):
        load_pretrained(tmp_path)
