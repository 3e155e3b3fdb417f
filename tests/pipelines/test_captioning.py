"""Captioning and text generation pipelines: inputs of every kind, batching, stops, seeds, media errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.io import MediaError, write_image
from multimodal.pipelines import ImageCaptionPipeline, TextGenerationPipeline, VideoCaptionPipeline, export_to_video


def clip(seed: int, frames: int = 17) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8)


def test_video_captions_batched_equal_one_by_one_and_files_work(pipe, tmp_path):
    cap = VideoCaptionPipeline.from_pipe(pipe)
    videos = [clip(0), clip(1), clip(2)]
    batched = cap(videos, max_new_tokens=6)
    alone = [cap(v, max_new_tokens=6).tokens[0] for v in videos]
    assert batched.tokens == alone and len(batched.text) == 3
    assert batched.text[0] == pipe.tokenizer.decode(batched.tokens[0]).strip()
    sampled = cap(videos, max_new_tokens=6, do_sample=True, top_p=0.9,
                  generator=[torch.Generator().manual_seed(i) for i in range(3)])
    sampled_alone = [cap(v, max_new_tokens=6, do_sample=True, top_p=0.9,
                         generator=torch.Generator().manual_seed(i)).tokens[0] for i, v in enumerate(videos)]
    assert sampled.tokens == sampled_alone
    path = export_to_video(videos[0], tmp_path / "clip.mp4", fps=8)
    from_file = cap(path, max_new_tokens=6)
    assert len(from_file.tokens[0]) == 6
    with_prompt = cap(videos[0], prompt="what moves?", max_new_tokens=6)
    assert with_prompt.tokens[0] != alone[0] or with_prompt.text[0] != batched.text[0]
    eight = cap(clip(3, frames=30), num_frames=9, max_new_tokens=2)   # 9 frames sampled -> 3 latent frames
    assert len(eight.tokens[0]) == 2


def test_image_captions_from_paths_pil_and_arrays(pipe, tmp_path):
    cap = ImageCaptionPipeline.from_pipe(pipe)
    image = clip(5, frames=1)[0]
    write_image(tmp_path / "pic.png", image)
    outs = [cap(x, max_new_tokens=5).tokens[0] for x in (str(tmp_path / "pic.png"), Image.fromarray(image), image)]
    assert outs[0] == outs[1] == outs[2]
    both = cap([image, clip(6, frames=1)[0]], max_new_tokens=5)
    assert both.tokens[0] == outs[0]


def test_media_errors_are_typed_and_name_the_file(pipe, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(MediaError, match="bad.mp4"):
        VideoCaptionPipeline.from_pipe(pipe)(str(bad))
    with pytest.raises(MediaError, match="no such file"):
        ImageCaptionPipeline.from_pipe(pipe)(str(tmp_path / "missing.png"))


def test_text_generation_stops_seeds_and_equal_length_batches(pipe):
    gen = TextGenerationPipeline.from_pipe(pipe)
    free = gen("a red circle", max_new_tokens=8)
    assert len(free.tokens[0]) == 8 and free.finish_reason == ["length"]
    word = free.text[0].split()[1] if len(free.text[0].split()) > 1 else free.text[0][:2]
    stopped = gen("a red circle", max_new_tokens=8, stop_strings=[word])
    assert stopped.finish_reason == ["stop_string"] and word not in stopped.text[0]
    by_token = gen("a red circle", max_new_tokens=8, stop_token_ids=[free.tokens[0][2]])
    assert by_token.tokens[0] == free.tokens[0][:free.tokens[0].index(free.tokens[0][2])]
    a = gen("a red circle", max_new_tokens=6, do_sample=True, temperature=1.3, generator=torch.Generator().manual_seed(4))
    b = gen("a red circle", max_new_tokens=6, do_sample=True, temperature=1.3, generator=torch.Generator().manual_seed(4))
    assert a.tokens == b.tokens
    prompts = ["a red circle", "a blue square"]                    # same token count: no padding in the batch
    assert len(pipe.tokenizer.encode(prompts[0])) == len(pipe.tokenizer.encode(prompts[1]))
    assert gen(prompts, max_new_tokens=5).tokens == [gen(p, max_new_tokens=5).tokens[0] for p in prompts]
    (texts,) = gen(prompts, max_new_tokens=3, return_dict=False)
    assert len(texts) == 2


def test_no_immediate_repeat_defaults_to_the_models_generation_config(pipe):
    """None takes the model's `generation_config`; the text pipelines share one decoding path, so the tiny model's
    stutter ("... 179 179 179 179") shows it through text generation, and the caption pipelines pass the setting on."""
    gen = TextGenerationPipeline.from_pipe(pipe)
    prompts = ["a red circle", "two small", "digit", "moves"]
    plain = gen(prompts, max_new_tokens=16, no_immediate_repeat=False).tokens
    blocked = gen(prompts, max_new_tokens=16, no_immediate_repeat=True).tokens
    assert any(a == b for row in plain for a, b in zip(row, row[1:]))
    assert all(a != b for row in blocked for a, b in zip(row, row[1:]))
    assert gen(prompts, max_new_tokens=16).tokens == plain                 # the tiny model's default: off
    saved = pipe.model.generation_config
    try:
        pipe.model.generation_config = dataclasses.replace(saved, no_immediate_repeat=True)
        assert gen(prompts, max_new_tokens=16).tokens == blocked
        assert gen(prompts, max_new_tokens=16, no_immediate_repeat=False).tokens == plain
        video, image = clip(7), clip(8, frames=1)[0]
        for cap, x in ((VideoCaptionPipeline.from_pipe(pipe), video), (ImageCaptionPipeline.from_pipe(pipe), image)):
            assert cap(x, max_new_tokens=10).tokens == cap(x, max_new_tokens=10, no_immediate_repeat=True).tokens
    finally:
        pipe.model.generation_config = saved
