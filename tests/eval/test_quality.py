"""The quality table: caption rows against hand-made candidates, and one tiny end-to-end report of a random pipeline."""

import json

import pytest

from multimodal.eval.quality import QualitySettings, format_quality, headline, quality_report
from multimodal.eval.report import caption_table


def test_caption_rows_perfect_and_wrong():
    refs = ["a large red circle", "two small green triangles", "a blue square to the left of a yellow circle"]
    perfect = caption_table(refs, refs)
    assert perfect["overall"]["exact"] == 1.0 and perfect["overall"]["slot_f1"] == 1.0
    assert perfect["overall"]["bleu4"] == pytest.approx(1.0)
    assert set(perfect) >= {"single", "count", "relation", "overall"}
    # a wrong size: the single row loses exact match and one of its two slots (object, object=size)
    wrong = caption_table(["a small red circle"] + refs[1:], refs)
    assert wrong["single"]["exact"] == 0.0
    assert wrong["single"]["slot_f1"] == pytest.approx(1 / 2)
    assert wrong["count"]["exact"] == 1.0
    assert wrong["overall"]["exact"] == pytest.approx(2 / 3)


def test_quality_report_of_a_random_pipeline():
    from multimodal.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_scratch("debug", seed=0)
    settings = QualitySettings(images=3, videos=2, steps=2, batch_size=2, autoencoder_images=2, autoencoder_videos=1)
    report = quality_report(pipe, settings)
    json.dumps(report)                                                  # JSON-ready
    for split in ("test", "held-out"):
        assert set(report["splits"][split]) == {"text_to_image", "text_to_video", "image_to_text", "video_to_text"}
        assert report["splits"][split]["text_to_image"]["overall"]["samples"] == 3
        assert report["splits"][split]["video_to_text"]["overall"]["samples"] == 2
    assert report["splits"]["held-out"]["text_to_image"]["held-out"]["samples"] == 3   # every held-out sample is tagged
    # an untrained model fails: every failure is listed with its index and failed clauses
    assert report["splits"]["test"]["text_to_image"]["overall"]["accuracy"] == 0.0
    assert len(report["failures"]["test"]["text_to_image"]) == 3
    assert 0.0 < report["autoencoder"]["image_psnr"] < 20.0             # a random narrow autoencoder
    assert "in-distribution text_to_image accuracy" in headline(report)
    assert "| overall | 3 |" in format_quality(report)
    # what the wrong captions get wrong: a share of all captions per kind; `any` is 1 - exact match
    for split in ("test", "held-out"):
        for task, n in (("image_to_text", 3), ("video_to_text", 2)):
            errors = report["caption_errors"][split][task]
            assert errors["samples"] == n
            assert errors["any"] == pytest.approx(1 - report["splits"][split][task]["overall"]["exact"])
            wrong = report["failures"][split][task]
            assert all(w["errors"] for w in wrong)
            assert errors["grammar"] == pytest.approx(sum("grammar" in w["errors"] for w in wrong) / n)
    assert "| test · image_to_text | 3 |" in format_quality(report)


def test_quality_settings_reject_bad_values():
    with pytest.raises(ValueError, match="unknown quality tasks"):
        QualitySettings(tasks=("painting",))
    with pytest.raises(ValueError, match="steps"):
        QualitySettings(steps=0)


def test_best_of_k_rows_and_the_oracle():
    """With candidates, every draft is judged and scored once; the rows per K pick by the model's score (what
    `num_candidates=K` returns) and by the world's scorer (the oracle, never worse), from the same drafts."""
    import numpy as np

    from multimodal.pipelines import TextToImagePipeline

    pipe = TextToImagePipeline.from_scratch("debug", seed=0)
    common = dict(images=4, videos=0, steps=2, batch_size=3, autoencoder_images=0, autoencoder_videos=0,
                  splits=("validation",), tasks=("text_to_image",))
    plain = quality_report(pipe, QualitySettings(**common))
    report = quality_report(pipe, QualitySettings(candidates=(3, 1, 2), **common))
    per_k = report["candidates"]["validation"]["text_to_image"]
    drafts = report["drafts"]["validation"]["text_to_image"]
    assert list(per_k) == ["1", "2", "3"]
    assert [len(d) for d in drafts["log_likelihood"]] == [3] * 4
    assert per_k["1"]["model"] == report["splits"]["validation"]["text_to_image"]
    assert per_k["1"]["model"]["overall"]["count_ok"] == pytest.approx(
        plain["splits"]["validation"]["text_to_image"]["overall"]["count_ok"])
    for k in (1, 2, 3):
        picks = [int(np.argmax(ll[:k])) for ll in drafts["log_likelihood"]]
        count_ok = np.mean([ok[p] for ok, p in zip(drafts["count_ok"], picks)])
        assert per_k[str(k)]["model"]["overall"]["count_ok"] == pytest.approx(count_ok)
        assert per_k[str(k)]["oracle"]["overall"]["count_ok"] == pytest.approx(
            np.mean([any(ok[:k]) for ok in drafts["count_ok"]]))
        for metric in ("accuracy", "count_ok"):
            assert per_k[str(k)]["oracle"]["overall"][metric] >= per_k[str(k)]["model"]["overall"][metric]
    assert "best of K drafts" in format_quality(report)
    with pytest.raises(ValueError, match="num_candidates must be >= 1"):
        QualitySettings(candidates=(0,))
