"""The per-clause rule: 100% on the world's renders, >= 99% after H.264, and failures where they belong."""

import numpy as np
import pytest

from multimodal.data.files import read_video, write_mp4
from multimodal.data.render import render_sample
from multimodal.data.world import WorldObject, sample_image, sample_video, split_seed
from multimodal.eval.scorer import motion_of, score_frames, score_sample


def test_renders_score_100_percent():
    images = [sample_image(split_seed("train", i)) for i in range(200)]
    videos = [sample_video(split_seed("train", i)) for i in range(30)]
    for s in images + videos:
        result = score_sample(s, render_sample(s))
        assert result.passed, (s.caption, result.details)


def test_held_out_renders_score_100_percent_apart_from_unseen_glyphs():
    passed, digit_misreads, total = 0, 0, 0
    for i in range(150):
        for s in (sample_image(split_seed("held-out", i)),) + ((sample_video(split_seed("held-out", i)),) if i < 30 else ()):
            result = score_sample(s, render_sample(s))
            total += 1
            passed += result.passed
            # the only admissible failure: a test glyph the classifier misreads
            if not result.passed:
                assert any("digit" in d for d in result.details), result.details
                digit_misreads += 1
    assert passed / total >= 0.98, (passed, total)


def test_at_least_99_percent_after_an_mp4_round_trip(tmp_path):
    images = [sample_image(split_seed("test", i)) for i in range(150)]
    frames = np.concatenate([render_sample(s) for s in images])
    write_mp4(tmp_path / "images.mp4", frames)  # 150 images as the frames of one clip
    back = read_video(tmp_path / "images.mp4")
    passed = sum(score_sample(s, f[None]).passed for s, f in zip(images, back))
    videos = [sample_video(split_seed("test", i)) for i in range(50)]
    for i, s in enumerate(videos):
        write_mp4(tmp_path / f"{i}.mp4", render_sample(s))
        passed += score_sample(s, read_video(tmp_path / f"{i}.mp4")).passed
    assert passed / 200 >= 0.99, passed


def _one(obj, kind="single", frames=1):
    from multimodal.data.world import CaptionClauses, WorldSample

    return render_sample(WorldSample(0, "train", kind, (obj,) if isinstance(obj, WorldObject) else tuple(obj), CaptionClauses(kind, ()), frames))


def test_wrong_captions_fail_the_right_clause():
    frame = _one(WorldObject("red", "circle", "large", 10, 10))
    assert score_frames("a large red circle", frame).passed
    assert score_frames("a large blue circle", frame).failed == ["colour"]
    assert score_frames("a large red square", frame).failed == ["shape"]
    assert score_frames("a small red circle", frame).failed == ["size"]
    assert score_frames("two large red circles", frame).failed == ["count"]
    pair = _one([WorldObject("blue", "square", "small", 6, 20), WorldObject("yellow", "circle", "large", 36, 22)])
    assert score_frames("a blue square to the left of a yellow circle", pair).passed
    assert score_frames("a yellow circle to the right of a blue square", pair).passed
    assert score_frames("a blue square above a yellow circle", pair).failed == ["relation"]
    assert score_frames("a blue square to the left of a green circle", pair).failed == ["objects"]
    bad = score_frames("a purple elephant", frame)
    assert not bad.passed and bad.failed == ["grammar"]
    assert score_frames("a large red circle moves left", frame).failed == ["frames"]


def test_video_clauses_motion_and_linking():
    video = _one([WorldObject("green", "triangle", "small", 40, 10, "moves left"), WorldObject("white", "digit 4", "large", 6, 36, "moves right", glyph=4)], "video", 17)
    assert score_frames("a white digit 4 moves right and a green triangle moves left", video).passed
    assert score_frames("a green triangle moves left and a white digit 4 moves right", video).passed  # order is not a clause
    assert score_frames("a white digit 4 moves up and a green triangle moves left", video).failed == ["motion"]
    assert score_frames("a white digit 4 moves right", video).failed == ["count"]
    assert score_frames("a white digit 4 moves right and a green triangle moves left", video[:1]).failed == ["frames"]
    still = np.repeat(video[:1], 17, axis=0)
    assert score_frames("a white digit 4 stays still and a green triangle stays still", still).passed


def test_motion_from_least_squares_slope():
    t = np.arange(17, dtype=float)
    assert motion_of(np.stack([30 - 2 * t, 30 + 0 * t], 1)) == "moves left"
    assert motion_of(np.stack([30 + 0 * t, 30 + 1.2 * t], 1)) == "moves down"
    assert motion_of(np.stack([30 + 0.9 * t, 30 - 0.5 * t], 1)) == "stays still"
    noisy = np.stack([20 + 2 * t, 30 + np.sin(t) * 3], 1)
    assert motion_of(noisy) == "moves right"
