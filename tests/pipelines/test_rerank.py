"""Generate, then check: drafts ranked by the model's own log-likelihood of the prompt (pipelines/rerank.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal.pipelines import TextToImagePipeline, TextToVideoPipeline
from multimodal.pipelines.rerank import MAX_CANDIDATES

STEPS = dict(num_inference_steps=2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def video(pipe) -> TextToVideoPipeline:
    v = TextToVideoPipeline.from_pipe(pipe)
    v.set_progress_bar_config(disable=True)
    return v


@torch.no_grad()
def plain_log_likelihood(pipe, pixels: torch.Tensor, prompt: str, kind: str) -> float:
    """The reference: `<bos> <begin> visual <end> prompt <eos>` through `build_batch` (segment by segment), one plain
    forward, and the sum of log-softmax at the prompt's tokens and <eos>."""
    model = pipe.model
    z = pipe.encode_pixels(pixels[None])[0]                                            # [C, T', h, w]
    ids = pipe.tokenizer.encode(prompt) + [model.config.token_ids.eos]
    batch = model.build_batch(model.caption_samples([z], kind, [ids]), "right")
    log_probs = torch.log_softmax(model(batch).logits[0].double(), -1)                 # [S, V]
    first = batch.inputs_embeds.shape[1] - len(ids)                                    # where the prompt starts
    return float(sum(log_probs[first + j - 1, t] for j, t in enumerate(ids)))


def test_one_candidate_is_todays_pipeline(pipe, video):
    for p, field in ((pipe, "images"), (video, "frames")):
        plain = p("a red circle", generator=gen(3), output_type="np", **STEPS)
        one = p("a red circle", generator=gen(3), output_type="np", num_candidates=1, **STEPS)
        np.testing.assert_array_equal(getattr(one, field), getattr(plain, field))
        assert one.scores is None and one.candidate_index is None


def test_score_equals_a_plain_forward(pipe, video):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    prompts = ["a red circle", "two small green triangles above a blue square"]
    out = pipe.score(images, prompts)
    pixels = pipe.preprocess_media(images, None, None, None)                           # [2, 3, 1, 64, 64]
    for i in range(2):
        ref = plain_log_likelihood(pipe, pixels[i], prompts[i], "image")
        assert abs(float(out.log_likelihood[i]) - ref) <= 1e-5 * max(1.0, abs(ref))
        assert int(out.num_tokens[i]) == len(pipe.tokenizer.encode(prompts[i])) + 1
    torch.testing.assert_close(out.mean_log_likelihood, out.log_likelihood / out.num_tokens)
    clip = rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    got = video.score(clip, "a small blue square moves left")
    ref = plain_log_likelihood(video, video.preprocess_media(clip, None, None, None)[0],
                               "a small blue square moves left", "video")
    assert abs(float(got.log_likelihood[0]) - ref) <= 1e-5 * max(1.0, abs(ref))


def test_a_batch_of_k_equals_k_single_calls(pipe):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    prompts = ["a red circle", "a blue square", "three white digit 7s", "a large cyan triangle"]
    batch = pipe.score(images, prompts)
    single = torch.cat([pipe.score(im, p).log_likelihood for im, p in zip(images, prompts)])
    torch.testing.assert_close(batch.log_likelihood, single, rtol=1e-5, atol=1e-5)
    chunked = pipe.score(images, prompts, batch_size=3)
    torch.testing.assert_close(chunked.log_likelihood, batch.log_likelihood, rtol=1e-5, atol=1e-5)


def test_drafts_do_not_depend_on_k(pipe):
    head = pipe.model.image_head

    def shape(b):
        return head.latent_shape(b, 64, 64, 8)

    four = pipe.prepare_drafts(shape, 2, 4, [gen(0), gen(1)], None).view(2, 4, *shape(1)[1:])
    two = pipe.prepare_drafts(shape, 2, 2, [gen(0), gen(1)], None).view(2, 2, *shape(1)[1:])
    one = pipe.prepare_drafts(shape, 2, 1, [gen(0), gen(1)], None)
    torch.testing.assert_close(four[:, :2], two, rtol=0, atol=0)
    torch.testing.assert_close(four[:, 0], one, rtol=0, atol=0)
    single = pipe.prepare_drafts(shape, 1, 3, gen(5), None)                            # one generator: rounds
    torch.testing.assert_close(single[0:1], pipe.prepare_latents(shape(1), gen(5), None), rtol=0, atol=0)


def test_best_draft_is_returned_with_every_score(pipe):
    prompts = ["a red circle", "a blue square"]

    def kw(output_type="pil"):
        return dict(generator=[gen(s) for s in range(4)], num_images_per_prompt=2, output_type=output_type, **STEPS)

    every = pipe(prompts, num_candidates=3, return_all_candidates=True, **kw())
    best = pipe(prompts, num_candidates=3, **kw())
    assert len(every.images) == 12 and len(best.images) == 4
    assert every.scores.shape == (4, 3) and every.candidate_index.shape == (4, 3)
    assert (every.scores[:, :-1] >= every.scores[:, 1:]).all()                         # best first
    assert sorted(every.candidate_index[0].tolist()) == [0, 1, 2]
    torch.testing.assert_close(best.scores, every.scores)
    for o in range(4):
        assert np.array_equal(np.asarray(best.images[o]), np.asarray(every.images[3 * o]))
    # the scores are those of the written 8-bit images, read back through pipe.score
    rescored = pipe.score(every.images, [p for p in prompts for _ in range(6)])
    torch.testing.assert_close(rescored.log_likelihood.view(4, 3), every.scores, rtol=1e-4, atol=1e-4)
    # the draws that a K = 2 run makes are the first two of the K = 3 run
    two = pipe(prompts, num_candidates=2, return_all_candidates=True, **kw("np"))
    three = pipe(prompts, num_candidates=3, return_all_candidates=True, **kw("np"))

    def by_draw(out, k):
        frames = np.asarray(out.images).reshape(4, k, 64, 64, 3)
        return np.stack([frames[o][np.argsort(out.candidate_index[o].numpy())] for o in range(4)])

    np.testing.assert_allclose(by_draw(two, 2), by_draw(three, 3)[:, :2], atol=1e-4)


def test_video_drafts(video):
    out = video("a small blue square moves left", num_candidates=2, return_all_candidates=True, generator=gen(0),
                num_frames=9, output_type="np", **STEPS)
    assert out.frames.shape == (2, 9, 64, 64, 3) and out.scores.shape == (1, 2)
    lat = video("a small blue square moves left", num_candidates=2, generator=gen(0), num_frames=9,
                output_type="latent", **STEPS)
    assert lat.frames.shape == (1, 16, 3, 8, 8)


def test_bad_input(pipe, video):
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"num_candidates must be >= 1, got {bad}"):
            pipe("a red circle", num_candidates=bad, **STEPS)
    for bad in (2.0, "4", True):
        with pytest.raises(ValueError, match="num_candidates must be an integer"):
            video("a red circle", num_candidates=bad, **STEPS)
    with pytest.raises(ValueError, match=f"<= {MAX_CANDIDATES}"):
        pipe("a red circle", num_candidates=MAX_CANDIDATES + 1, **STEPS)
    images = [np.zeros((64, 64, 3), np.uint8)] * 3
    with pytest.raises(ValueError, match="got 3 images and 2 prompts"):
        pipe.score(images, ["a red circle", "a blue square"])
    with pytest.raises(ValueError, match="got 1 videos and 2 prompts"):
        video.score(np.zeros((5, 64, 64, 3), np.uint8), ["a", "b"])
    no_vae = TextToImagePipeline(model=pipe.model, tokenizer=pipe.tokenizer, scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="needs the vae"):
        no_vae.score(images[0], "a red circle")
