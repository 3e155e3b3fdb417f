"""Text-to-image / text-to-video: output types, seeding, batching, guidance, callbacks, schedulers, head-only steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from PIL import Image

from multimodal.pipelines import TextToImagePipeline, TextToVideoPipeline


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_image_output_types(pipe):
    def common():
        return dict(num_inference_steps=2, generator=gen(0))

    pil = pipe("a red circle", **common()).images
    assert len(pil) == 1 and isinstance(pil[0], Image.Image) and pil[0].size == (64, 64)
    arr = pipe("a red circle", output_type="np", **common()).images
    assert arr.shape == (1, 64, 64, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    pt = pipe("a red circle", output_type="pt", **common()).images
    assert pt.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[0]), (arr[0] * 255).round().astype(np.uint8))
    lat = pipe("a red circle", output_type="latent", **common()).images
    assert lat.shape == (1, 16, 1, 8, 8)
    wide = pipe("a red circle", height=32, width=48, output_type="np", num_inference_steps=1).images
    assert wide.shape == (1, 32, 48, 3)
    (tup,) = pipe("a red circle", output_type="latent", return_dict=False, **common())
    torch.testing.assert_close(tup, lat)
    with pytest.raises(ValueError, match="output_type"):
        pipe("x", output_type="jpeg")
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe("x", height=44)
    with pytest.raises(ValueError, match="must not be empty"):
        pipe(" ")


def test_seed_determinism_and_generator_lists_equal_one_by_one(pipe):
    prompts = ["a red circle", "two small blue squares above a green triangle"]
    a = pipe(prompts, num_inference_steps=3, generator=[gen(1), gen(2)], output_type="latent").images
    b = pipe(prompts, num_inference_steps=3, generator=[gen(1), gen(2)], output_type="latent").images
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    alone = torch.cat([pipe(p, num_inference_steps=3, generator=gen(s), output_type="latent").images
                       for p, s in zip(prompts, (1, 2))])
    torch.testing.assert_close(a, alone, atol=1e-5, rtol=1e-5)
    c = pipe(prompts, num_inference_steps=3, generator=[gen(3), gen(2)], output_type="latent").images
    assert (a[0] - c[0]).abs().mean() > 0.1 and torch.allclose(a[1], c[1], atol=1e-5)
    many = pipe("a red circle", num_images_per_prompt=3, num_inference_steps=2, output_type="latent",
                generator=gen(5)).images
    assert many.shape[0] == 3 and (many[0] - many[1]).abs().mean() > 0.1
    with pytest.raises(ValueError, match="generators"):
        pipe(prompts, generator=[gen(1)], num_inference_steps=1)


def test_prompt_and_guidance_change_the_result(pipe):
    kw = dict(num_inference_steps=3, output_type="latent")
    base = pipe("a red circle", generator=gen(0), **kw).images
    other = pipe("three large white digit 4s", generator=gen(0), **kw).images
    no_cfg = pipe("a red circle", generator=gen(0), guidance_scale=1.0, **kw).images
    neg = pipe("a red circle", negative_prompt="a blue square", generator=gen(0), **kw).images
    assert (base - other).abs().mean() > 1e-3
    assert (base - no_cfg).abs().mean() > 1e-3
    assert (base - neg).abs().mean() > 1e-3


def test_backbone_runs_once_and_the_head_once_per_step(pipe):
    calls = {"backbone": 0, "head": 0}
    hooks = [pipe.model.backbone.register_forward_hook(lambda *a: calls.__setitem__("backbone", calls["backbone"] + 1)),
             pipe.model.image_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))]
    try:
        pipe(["a red circle", "a blue square"], num_inference_steps=5, output_type="latent")
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"backbone": 1, "head": 5}           # conditional + unconditional rows in one call each


def test_callback_on_step_end_sees_and_replaces_latents_and_interrupt(pipe):
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, float(t), kwargs["latents"].shape, p.num_timesteps))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == p.num_timesteps - 1 else {}

    out = pipe("a red circle", num_inference_steps=4, output_type="latent", callback_on_step_end=callback).images
    assert [s[0] for s in seen] == [0, 1, 2, 3] and seen[0][3] == 4
    assert seen[0][1] > seen[-1][1]                      # timesteps go down
    assert out.abs().max() == 0
    with pytest.raises(ValueError, match="tensor_inputs"):
        pipe("x", num_inference_steps=1, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["foo"])

    def stop(p, i, t, kwargs):
        p._interrupt = True
        return {}

    start = torch.randn(1, 16, 1, 8, 8, generator=gen(9))
    first = pipe("a red circle", num_inference_steps=5, latents=start.clone(), output_type="latent",
                 callback_on_step_end=stop).images
    one = pipe("a red circle", num_inference_steps=5, latents=start.clone(), output_type="latent",
               callback_on_step_end=lambda p, i, t, k: {"latents": k["latents"]} if i == 0 else {}).images
    assert not torch.allclose(first, one)                # interrupted after one of five steps


def test_any_flow_scheduler_through_from_config(pipe):
    euler = pipe.scheduler
    kw = dict(num_inference_steps=3, output_type="latent")
    try:
        base = pipe("a red circle", generator=gen(0), **kw).images
        pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(euler.config)
        heun = pipe("a red circle", generator=gen(0), **kw).images
        assert pipe.num_timesteps == 5                   # Heun: 2 evaluations per step but the last
        pipe.scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                     flow_shift=3.0)
        dpm = pipe("a red circle", generator=gen(0), **kw).images
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(euler.config, shift=3.0)
        shifted = pipe("a red circle", generator=gen(0), **kw).images
    finally:
        pipe.scheduler = euler
    for x in (heun, dpm, shifted):
        assert x.shape == base.shape and torch.isfinite(x).all() and (x - base).abs().mean() > 1e-4


def test_text_to_video_frames_and_shares_the_model(pipe):
    video = TextToVideoPipeline.from_pipe(pipe)
    video.set_progress_bar_config(disable=True)
    assert video.model is pipe.model and video.vae is pipe.vae and video.tokenizer is pipe.tokenizer
    frames = video("a small blue square moves left", num_frames=9, num_inference_steps=2, generator=gen(0)).frames
    assert frames.shape == (1, 9, 64, 64, 3) and frames.dtype == np.float32
    pil = video("a small blue square moves left", num_frames=9, num_inference_steps=2, generator=gen(0),
                output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 9 and pil[0][0].size == (64, 64)
    np.testing.assert_array_equal(np.asarray(pil[0][4]), (frames[0, 4] * 255).round().astype(np.uint8))
    pt = video(["a", "b"], num_frames=5, num_inference_steps=1, output_type="pt").frames
    assert pt.shape == (2, 5, 3, 64, 64)
    lat = video("a red circle moves up", num_inference_steps=2, output_type="latent", generator=gen(0)).frames
    assert lat.shape == (1, 16, 5, 8, 8)                  # the model's default 17 frames -> 5 latent frames
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        video("x", num_frames=8)
    with pytest.raises(ValueError, match="longer than"):
        video("x", num_frames=21)
