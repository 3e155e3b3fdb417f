"""Caption grammar and metrics against hand-computed examples."""

import math

import pytest

from multimodal.data.world import SPLITS, sample_image, sample_video, split_seed
from multimodal.eval.captions import caption_slots, caption_tags, parse_caption
from multimodal.eval.metrics import bleu, cider_d, exact_match, score_captions, slot_scores


def test_every_generated_caption_parses_back_to_its_clauses():
    for split in SPLITS:
        for i in range(150):
            for s in (sample_image(split_seed(split, i)), sample_video(split_seed(split, i))):
                assert parse_caption(s.caption) == s.clauses, s.caption
                assert caption_tags(s.caption) == s.tags


def test_parser_is_lenient_on_form_and_returns_none_outside_the_grammar():
    p = parse_caption("  A Large RED circle. ")
    assert p.kind == "single" and p.objects[0].size == "large" and p.objects[0].colour == "red"
    assert parse_caption("an orange square").objects[0].colour == "orange"
    p = parse_caption("three large white digit 4s")
    assert p.kind == "count" and p.objects[0].count == 3 and p.objects[0].shape == "digit 4"
    for text in ("a red elephant", "", "a red circle moves sideways", "four red circles", None, 7, "a red circle and"):
        assert parse_caption(text) is None
        assert caption_slots(parse_caption(text)) == {}


def test_slots_canonicalise_relations():
    a = "a blue square to the left of a yellow circle"
    assert exact_match("a yellow circle to the right of a blue square", a)
    assert exact_match("a yellow circle below a blue square", "a blue square above a yellow circle")
    assert not exact_match("a blue square above a yellow circle", a)
    p, r, f = slot_scores("a blue square above a yellow circle", a)  # 2 of 3 slots agree
    assert (p, r) == pytest.approx((2 / 3, 2 / 3)) and f == pytest.approx(2 / 3)
    p, r, f = slot_scores("a small green digit 7", "a large green digit 7")  # object yes, size no
    assert (p, r, f) == pytest.approx((0.5, 0.5, 0.5))
    p, r, f = slot_scores("two small red triangles", "three small red triangles")
    # cand {object x2, size, count=2}; ref {object x3, size, count=3}: 3 shared of 4 and 5
    assert (p, r) == pytest.approx((3 / 4, 3 / 5)) and f == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert slot_scores("gibberish", a) == (0.0, 0.0, 0.0)


def test_bleu4_by_hand():
    cand, ref = "a large red circle moves left", "a small red circle moves left"
    # clipped precisions 5/6, 3/5, 2/4, 1/3; equal lengths, no brevity penalty
    assert bleu([cand], [[ref]]) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert bleu([ref], [[ref]]) == pytest.approx(1.0)
    # a shorter candidate: 'a red circle moves left' (5) vs 6 -> all precisions 1, BP = exp(1 - 6/5)
    assert bleu(["a red circle moves left"], [["a small red circle moves left"]]) == pytest.approx(
        (1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25 * math.exp(1 - 6 / 5)
    )
    # clipping: 'red red red red' against 'a red circle' keeps one 'red' of four; no 2-gram matches
    assert bleu(["red red red red"], [["a red circle red"]]) == 0.0
    # corpus level: counts are summed before the ratio
    two = bleu([cand, ref], [[ref], [ref]])
    assert two == pytest.approx(((5 + 6) / 12 * (3 + 5) / 10 * (2 + 4) / 8 * (1 + 3) / 6) ** 0.25)


def test_cider_d_by_hand():
    # item 1: 'a b' vs 'a b'; item 2: 'c d' vs 'a d'. N = 2, df(a) = 2 -> idf 0; every other idf = log 2.
    # item 1: n=1 cos = 1, n=2 cos = 1, n=3,4 empty -> 10 * 2/4 = 5
    # item 2: n=1: cand (c: l, d: l), ref (a: 0, d: l): l^2 / (sqrt(2) l * l) = 1/sqrt 2; n=2: 0 -> 10 * 0.7071/4
    expected = (5.0 + 10 * (1 / math.sqrt(2)) / 4) / 2
    assert cider_d(["a b", "c d"], [["a b"], ["a d"]]) == pytest.approx(expected)
    # length penalty: same item with a candidate 3 words longer is damped by exp(-9/72)
    longer = cider_d(["a b x y z", "c d"], [["a b"], ["a d"]])
    assert longer < expected
    # identical corpora score high; a one-item corpus has idf 0 everywhere -> 0
    assert cider_d(["x"], [["x"]]) == 0.0
    with pytest.raises(ValueError, match="2 candidates but 1"):
        cider_d(["a", "b"], [["a"]])


def test_score_captions_bundle():
    refs = ["a large red circle", "a blue square to the left of a yellow circle", "two small red triangles"]
    cands = ["a large red circle", "a yellow circle to the right of a blue square", "not a caption"]
    s = score_captions(cands, refs)
    assert s.count == 3 and s.exact == pytest.approx(2 / 3) and s.exact_text == pytest.approx(1 / 3)
    assert s.parsed == pytest.approx(2 / 3) and s.slot_f1 == pytest.approx(2 / 3)
    assert 0.0 < s.bleu4 < 1.0 and s.cider_d > 0.0
    perfect = score_captions(refs, refs)
    assert perfect.exact == perfect.slot_f1 == perfect.bleu4 == 1.0
