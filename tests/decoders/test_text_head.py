"""Sampling pieces of the text head, checked with numbers on hand-made logits and a tiny backbone."""

from __future__ import annotations

import json
import math

import pytest
import torch

from multimodal.config import preset
from multimodal.backbone.transformer import Transformer
from multimodal.decoders.text import (GenerationConfig, apply_repetition_penalty, choose_tokens, generate_text,
                                      process_logits, top_k_filter, top_p_filter)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 3.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept_k = torch.isfinite(top_k_filter(logits, 2))
    assert kept_k.tolist() == [[True, True, False, False, False]]
    kept_p = torch.isfinite(top_p_filter(logits, 0.8))           # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15
    assert kept_p.tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.3)).sum() == 1  # always at least the best token
    shuffled = logits[:, [3, 0, 4, 2, 1]]
    assert torch.isfinite(top_p_filter(shuffled, 0.8)).tolist() == [[False, True, False, True, True]]


def test_temperature_and_sampling_frequencies():
    logits = torch.tensor([[math.log(0.7), math.log(0.3)]]).repeat(4000, 1)
    cfg = GenerationConfig(do_sample=True, temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    draws = choose_tokens(process_logits(logits, torch.zeros_like(logits, dtype=torch.bool), cfg), cfg, [gen] * 4000)
    assert abs((draws == 0).float().mean().item() - 0.7) < 0.03
    hot = process_logits(logits[:1], torch.zeros(1, 2, dtype=torch.bool), GenerationConfig(do_sample=True, temperature=0.5))
    assert abs(hot.softmax(-1)[0, 0].item() - 0.49 / (0.49 + 0.09)) < 1e-5
    greedy = GenerationConfig()
    assert choose_tokens(logits[:3], greedy, [None] * 3).tolist() == [0, 0, 0]


def test_config_rejects_bad_values():
    for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_k=-1), dict(max_new_tokens=-1),
                dict(repetition_penalty=0.0)):
        with pytest.raises(ValueError):
            GenerationConfig(**bad)


@pytest.fixture(scope="module")
def backbone() -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("debug")).eval()


def run(backbone: Transformer, cfg: GenerationConfig, ids: list[int], decode=None, generator=None):
    x = torch.tensor([ids])
    mask = torch.ones_like(x)
    pos = torch.arange(len(ids))[None]
    return generate_text(backbone, backbone.embed, backbone.embed(x), mask, pos, x, x, cfg, generator, decode)


def test_stops_at_eos_stop_token_stop_string_and_length(backbone):
    ids = [0, 11, 12, 13]
    free = run(backbone, GenerationConfig(max_new_tokens=6), ids)
    toks = free.tokens[0]
    assert len(toks) == 6 and free.finish_reason == ["length"]
    at_eos = run(backbone, GenerationConfig(max_new_tokens=6, eos_token_id=toks[2]), ids)
    assert at_eos.tokens[0] == toks[:toks.index(toks[2])] and at_eos.finish_reason == ["eos"]
    at_stop = run(backbone, GenerationConfig(max_new_tokens=6, stop_token_ids=(toks[3],)), ids)
    assert at_stop.tokens[0] == toks[:toks.index(toks[3])] and at_stop.finish_reason == ["stop_token"]
    decode = lambda t: " ".join(f"w{i}" for i in t)                                  # noqa: E731
    stop = f"w{toks[1]}"
    at_string = run(backbone, GenerationConfig(max_new_tokens=6, stop_strings=(stop,)), ids, decode)
    assert at_string.finish_reason == ["stop_string"]
    assert at_string.tokens[0] == toks[:toks.index(toks[1]) + 1]
    assert stop not in at_string.text[0] and at_string.text[0] == decode(toks)[:decode(toks).index(stop)]
    assert run(backbone, GenerationConfig(max_new_tokens=0), ids).tokens == [[]]


def test_seeded_sampling_is_reproducible_and_repetition_penalty_changes_choices(backbone):
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5)
    a = run(backbone, cfg, [0, 5, 6], generator=torch.Generator().manual_seed(1)).tokens
    b = run(backbone, cfg, [0, 5, 6], generator=torch.Generator().manual_seed(1)).tokens
    c = run(backbone, cfg, [0, 5, 6], generator=torch.Generator().manual_seed(2)).tokens
    assert a == b and a != c
    first = run(backbone, GenerationConfig(max_new_tokens=1), [0, 5, 6]).tokens[0][0]
    prompt = [0, 5, first, 6]                     # the greedy choice now appears in the prompt
    plain = run(backbone, GenerationConfig(max_new_tokens=12), prompt).tokens[0]
    strong = run(backbone, GenerationConfig(max_new_tokens=12, repetition_penalty=1e4), prompt).tokens[0]
    assert len(set(strong)) == len(strong) and not {0, 5, 6, first} & set(strong)
    assert plain != strong


def test_vocab_limit_masks_ids_past_the_tokenizer():
    logits = torch.tensor([[0.0, 1.0, 5.0, 9.0]])
    cfg = GenerationConfig(vocab_limit=2)
    scores = process_logits(logits, torch.zeros(1, 4, dtype=torch.bool), cfg)
    assert choose_tokens(scores, cfg, [None]).tolist() == [1]


def test_min_new_tokens_blocks_eos_until_reached(backbone):
    toks = run(backbone, GenerationConfig(max_new_tokens=6), [0, 11, 12, 13]).tokens[0]
    early = run(backbone, GenerationConfig(max_new_tokens=6, eos_token_id=toks[0]), [0, 11, 12, 13])
    assert early.tokens == [[]] and early.finish_reason == ["eos"]
    held = run(backbone, GenerationConfig(max_new_tokens=6, min_new_tokens=4, eos_token_id=toks[0]), [0, 11, 12, 13])
    assert len(held.tokens[0]) >= 4 and toks[0] not in held.tokens[0][:4]
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerationConfig(max_new_tokens=2, min_new_tokens=3)


def test_no_immediate_repeat_blocks_only_each_rows_previous_token():
    logits = torch.tensor([[0.0, 3.0, 9.0, 1.0], [0.0, 3.0, 9.0, 1.0], [0.0, 3.0, 9.0, 1.0]])
    seen = torch.zeros(3, 4, dtype=torch.bool)
    cfg = GenerationConfig(no_immediate_repeat=True)
    last = torch.tensor([2, 1, -1])                  # row 0 just wrote the best token, row 1 another, row 2 nothing
    scores = process_logits(logits, seen, cfg, last)
    assert scores[0, 2] == float("-inf") and scores[1, 1] == float("-inf")
    assert torch.equal(scores[0, [0, 1, 3]], logits[0, [0, 1, 3]]) and torch.equal(scores[2], logits[2])
    assert choose_tokens(scores, cfg, [None] * 3).tolist() == [1, 2, 2]
    off = process_logits(logits, seen, GenerationConfig(), last)
    assert torch.equal(off, logits)


def test_no_immediate_repeat_stops_a_stutter_and_changes_nothing_before_it(backbone):
    """The untrained debug backbone stutters under greedy decoding for some prompts: with the block no token follows
    itself (the prompt's last token included), and every token before the first stutter is unchanged."""
    stutters = []
    for k in range(3, 60):
        toks = run(backbone, GenerationConfig(max_new_tokens=12), [0, k]).tokens[0]
        seq = [k] + toks
        first = next((i for i in range(1, len(seq)) if seq[i] == seq[i - 1]), None)
        if first is not None:
            stutters.append((k, toks, first - 1))    # index in toks of the first repeated token
    assert stutters, "no prompt made the debug backbone repeat a token"
    for k, toks, at in stutters[:5]:
        fixed = run(backbone, GenerationConfig(max_new_tokens=12, no_immediate_repeat=True), [0, k]).tokens[0]
        seq = [k] + fixed
        assert all(a != b for a, b in zip(seq, seq[1:])), (k, fixed)
        assert fixed[:at] == toks[:at] and fixed[at] != toks[at]


def test_generation_config_round_trips_through_its_json_file(tmp_path):
    cfg = GenerationConfig(no_immediate_repeat=True, stop_strings=("\n",), max_new_tokens=20)
    assert cfg.to_diff_dict() == {"max_new_tokens": 20, "no_immediate_repeat": True, "stop_strings": ["\n"]}
    assert GenerationConfig().to_diff_dict() == {}
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps(cfg.to_diff_dict()))
    assert GenerationConfig.from_json_file(path) == cfg
    path.write_text('{"no_immediate_repeat": true, "no_repeat": 1}')
    with pytest.raises(ValueError, match=r"generation_config.json.*'no_repeat'"):
        GenerationConfig.from_json_file(path)
    path.write_text('{"no_immediate_repeat": tru')
    with pytest.raises(ValueError, match="generation_config.json: not valid JSON"):
        GenerationConfig.from_json_file(path)
    path.write_text('{"temperature": 0}')
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig.from_json_file(path)
