"""`caption_errors`: what a wrong caption gets wrong, by kind; empty exactly when the caption is an exact match."""

import random

import pytest

from multimodal.data.world import sample_image, sample_video, split_seed
from multimodal.eval.captions import ERROR_KINDS, caption_errors
from multimodal.eval.metrics import exact_match


@pytest.mark.parametrize("candidate, reference, errors", [
    # a relation turned round and a digit misread (the shipped model's commonest failure)
    ("a red square to the right of a magenta digit 2", "a magenta digit 9 to the right of a red square",
     ("digit", "relation")),
    # the same relation stated from the other object is no error
    ("a blue square to the left of a yellow circle", "a yellow circle to the right of a blue square", ()),
    ("a cyan square below a red circle", "a red circle above a cyan square", ()),
    ("a cyan square below a red circle", "a cyan square above a red circle", ("relation",)),
    ("a cyan square to the left of a red circle", "a cyan square above a red circle", ("relation",)),
    ("a red circle below a red circle", "a red triangle below a red circle", ("shape",)),
    ("a large green digit 6", "a large green digit 4", ("digit",)),
    ("a large green square", "a large green digit 4", ("shape",)),
    ("a small green digit 4", "a large green digit 4", ("size",)),
    ("a green digit 4", "a large green digit 4", ("size",)),
    ("a large blue digit 4", "a large green digit 4", ("colour",)),
    ("three large orange digit 0s", "three large orange digit 5s", ("digit",)),
    ("two large orange digit 5s", "three large orange digit 5s", ("count",)),
    ("two small yellow circles", "a yellow circle above an orange circle", ("objects",)),
    ("a small red square moves left", "a red square moves left and a blue circle stays still", ("objects",)),
    ("the red thing", "a large red circle", ("grammar",)),
    ("", "a large red circle", ("grammar",)),
    # a clip's objects in either order
    ("a blue circle stays still and a red square moves left",
     "a red square moves left and a blue circle stays still", ()),
    ("a blue circle moves up and a red square moves left",
     "a red square moves left and a blue circle stays still", ("motion",)),
    ("a green circle stays still and a green circle moves down",
     "a green square stays still and a green circle moves down", ("shape",)),
    ("a large white digit 2 moves up", "a large white digit 4 stays still", ("digit", "motion")),
])
def test_error_kinds(candidate, reference, errors):
    assert caption_errors(candidate, reference) == errors
    assert (errors == ()) == exact_match(candidate, reference)


def test_no_error_exactly_when_exact_match():
    """Over world captions paired with themselves, their restatements and other captions of the same split, an
    empty result and exact match agree, and every kind named is a known one."""
    rng = random.Random(0)
    captions = [sample_image(split_seed("validation", i)).caption for i in range(150)]
    captions += [sample_video(split_seed("validation", i)).caption for i in range(60)]
    kinds = set()
    for ref in captions:
        for cand in [ref, *rng.sample(captions, 8)]:
            errors = caption_errors(cand, ref)
            assert (errors == ()) == exact_match(cand, ref), (cand, ref, errors)
            assert list(errors) == [k for k in ERROR_KINDS if k in errors]
            kinds |= set(errors)
    assert {"objects", "colour", "shape", "digit", "relation", "motion"} <= kinds


def test_reference_outside_the_grammar_is_rejected():
    with pytest.raises(ValueError, match="'a purple blob' is outside the world's grammar"):
        caption_errors("a large red circle", "a purple blob")
