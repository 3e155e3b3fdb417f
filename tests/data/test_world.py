"""The world generator obeys WORLD.md: purity, splits, held-out compositions, geometry, captions."""

import numpy as np
import pytest

from multimodal.data.glyphs import glyph_coverage, glyph_labels, is_test_glyph
from multimodal.data.render import render_sample, shape_coverage
from multimodal.data.world import (
    COLOURS,
    FRAME_SIZE,
    GAP,
    HELD_OUT_COLOUR_SHAPE,
    HELD_OUT_SHAPE_MOTION,
    MARGIN,
    NUM_FRAMES,
    RELATION_TIE,
    SIZES,
    SPLITS,
    relation_of,
    sample_image,
    sample_video,
    split_of,
    split_seed,
)


def _samples(split, n):
    return [sample_image(split_seed(split, i)) for i in range(n)] + [sample_video(split_seed(split, i)) for i in range(n)]


def _has_held_out(sample):
    return any(
        (o.colour, o.shape) in HELD_OUT_COLOUR_SHAPE or (sample.num_frames > 1 and (o.shape, o.motion) in HELD_OUT_SHAPE_MOTION)
        for o in sample.objects
    )


def test_samples_are_pure_functions_of_the_seed():
    for seed in (0, 7, split_seed("test", 3), split_seed("held-out", 11)):
        for make in (sample_image, sample_video):
            a, b = make(seed), make(seed)
            assert a == b
            assert np.array_equal(render_sample(a), render_sample(b))
    assert sample_image(1).caption != sample_image(2).caption or sample_image(1).objects != sample_image(2).objects


def test_split_ranges_are_disjoint_and_named():
    ranges = sorted(SPLITS.values())
    for (lo1, hi1), (lo2, hi2) in zip(ranges, ranges[1:]):
        assert hi1 <= lo2
    for name in SPLITS:
        assert split_of(split_seed(name, 0)) == name
    with pytest.raises(ValueError, match="outside every split"):
        split_of(-1)
    with pytest.raises(ValueError, match="unknown split"):
        split_seed("dev", 0)


def test_training_never_sees_held_out_pairs_or_test_glyphs():
    for s in _samples("train", 600):
        assert not _has_held_out(s), s.caption
        assert "held-out" not in s.tags
        for o in s.objects:
            if o.glyph is not None:
                assert not is_test_glyph(o.glyph)
                assert f"digit {glyph_labels()[o.glyph]}" == o.shape


def test_test_split_is_in_distribution_with_test_glyphs_and_held_out_split_always_held_out():
    glyphs = 0
    for s in _samples("test", 300):
        assert not _has_held_out(s)
        for o in s.objects:
            if o.glyph is not None:
                glyphs += 1
                assert is_test_glyph(o.glyph)
    assert glyphs > 50
    pairs = set()
    for s in _samples("held-out", 300):
        assert _has_held_out(s) and "held-out" in s.tags, s.caption
        pairs |= {(o.colour, o.shape) for o in s.objects} | {(o.shape, o.motion) for o in s.objects if s.num_frames > 1}
    assert HELD_OUT_COLOUR_SHAPE | HELD_OUT_SHAPE_MOTION <= pairs  # every held-out pair is exercised


def test_geometry_margins_gaps_and_motion():
    for s in _samples("train", 300):
        for t in range(s.num_frames):
            boxes = [o.box(t) for o in s.objects]
            for x0, y0, x1, y1 in boxes:
                assert MARGIN <= x0 and x1 <= FRAME_SIZE - MARGIN and MARGIN <= y0 and y1 <= FRAME_SIZE - MARGIN
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    a, b = boxes[i], boxes[j]
                    assert max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) >= GAP
        if s.num_frames > 1:
            assert s.num_frames == NUM_FRAMES
            for o in s.objects:
                (x0, y0), (x1, y1) = o.centre(0), o.centre(NUM_FRAMES - 1)
                assert abs(x1 - x0) + abs(y1 - y0) in (0, 32)
            xs = [o.centre(0)[0] for o in s.objects]
            assert xs == sorted(xs)
        if s.kind == "relation":
            (ax, ay), (bx, by) = s.objects[0].centre(), s.objects[1].centre()
            assert abs(abs(ax - bx) - abs(ay - by)) > RELATION_TIE
            assert s.clauses.relation == relation_of((ax, ay), (bx, by))
            assert s.clauses.relation in s.caption
        if s.kind == "count":
            assert len({(o.colour, o.shape, o.size) for o in s.objects}) == 1
            assert len(s.objects) == s.clauses.objects[0].count in (2, 3)


def test_relation_rule():
    assert relation_of((10, 30), (40, 32)) == "to the left of"
    assert relation_of((40, 30), (10, 32)) == "to the right of"
    assert relation_of((30, 10), (32, 40)) == "above"  # y grows downwards
    assert relation_of((30, 40), (32, 10)) == "below"
    assert relation_of((0, 0), (5, 5)) is None


def test_captions_follow_the_grammar():
    seen = {}
    for s in _samples("train", 200):
        seen.setdefault((s.kind, len(s.clauses.objects)), s.caption)
        words = s.caption.split()
        assert words[0] in ("a", "an", "two", "three")
        if s.kind == "single" or (s.kind == "video" and len(s.objects) == 1):
            assert words[1] == s.objects[0].size
        if s.kind == "relation" or (s.kind == "video" and len(s.objects) == 2):
            assert "small" not in words and "large" not in words
    assert len(seen) == 5  # single, relation, count, 1-object video, 2-object video
    s = next(s for s in _samples("train", 100) if s.kind == "count")
    assert s.caption.split()[-1].endswith("s")


def test_renders_use_the_palette_and_fill_their_boxes():
    for name, size in SIZES.items():
        for shape, fill in (("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)):
            cover = shape_coverage(shape, size)
            ys, xs = np.nonzero(cover)
            assert ys.min() == 0 and xs.min() == 0 and ys.max() == size - 1 and xs.max() == size - 1
            assert abs(cover.mean() - fill) < 0.1, (shape, size, cover.mean())
    tri = shape_coverage("triangle", 20)
    assert tri[0].sum() < tri[-1].sum() == 20  # apex up, base at the bottom
    palette = {tuple(c) for c in COLOURS.values()} | {(0, 0, 0)}
    for s in _samples("train", 100):
        frames = render_sample(s)
        assert frames.shape == (s.num_frames, 64, 64, 3) and frames.dtype == np.uint8
        if all(o.glyph is None for o in s.objects):
            assert {tuple(p) for p in frames.reshape(-1, 3)} <= palette
    assert glyph_coverage(0, 20).shape == (20, 20) and 0.0 <= glyph_coverage(0, 20).min() <= glyph_coverage(0, 20).max() <= 1.0
