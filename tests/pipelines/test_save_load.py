"""Pipelines on disk: layout, round trips, sharing one model, dtype moves, and clear errors for bad names."""

from __future__ import annotations

import json

import pytest
import torch

from multimodal.pipelines import (BUILTIN_MODELS, ImageCaptionPipeline, ModelNotFoundError, TextGenerationPipeline,
                                  TextToImagePipeline, TextToVideoPipeline, VideoCaptionPipeline)


def test_layout_and_round_trip_for_every_task(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "TextToImagePipeline"
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["model"] == ["multimodal.model", "UnifiedModel"]
    assert index["vae"] == ["multimodal.tokenizers.autoencoder", "CausalAutoencoder"]
    for part in ("model/config.json", "model/model.safetensors", "vae/config.json", "vae/autoencoder.safetensors",
                 "tokenizer/tokenizer.json", "scheduler/scheduler_config.json"):
        assert (folder / part).is_file(), part
    assert not list(folder.rglob("*.tmp"))
    again = TextToImagePipeline.from_pretrained(folder)
    again.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2, output_type="latent")
    torch.testing.assert_close(again("a red circle", generator=torch.Generator().manual_seed(0), **kw).images,
                               pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw).images,
                               atol=0, rtol=0)
    text = TextGenerationPipeline.from_pretrained(folder)         # any task loads the same folder
    assert text("a red", max_new_tokens=5).tokens == TextGenerationPipeline.from_pipe(pipe)("a red", max_new_tokens=5).tokens
    video = TextToVideoPipeline.from_pretrained(folder)
    ours = {k: v for k, v in video.scheduler.config.items() if not k.startswith("_")}
    assert ours == {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}


def test_from_pipe_shares_components_without_copies(pipe):
    before = sum(p.numel() for p in pipe.model.parameters())
    others = [cls.from_pipe(pipe) for cls in (TextToVideoPipeline, VideoCaptionPipeline, ImageCaptionPipeline,
                                                 TextGenerationPipeline)]
    for other in others:
        assert other.model is pipe.model and other.vae is pipe.vae and other.tokenizer is pipe.tokenizer
        assert other.model.backbone.embed.weight.data_ptr() == pipe.model.backbone.embed.weight.data_ptr()
    assert sum(p.numel() for p in pipe.model.parameters()) == before


def test_to_dtype_keeps_precision_sensitive_parts_in_fp32(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "p")
    half = TextToImagePipeline.from_pretrained(tmp_path / "p", torch_dtype=torch.bfloat16)
    half.set_progress_bar_config(disable=True)
    assert half.dtype == torch.bfloat16 and half.model.backbone.embed.weight.dtype == torch.bfloat16
    assert half.model.backbone.rotary["main"].inv_freq.dtype == torch.float32
    assert half.vae.latent_std.dtype == torch.float32
    out = half("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    ref = pipe("a red circle", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == ref.shape and abs(out - ref).mean() < 0.05
    assert half.to("cpu") is half and half.device.type == "cpu"


def test_unknown_names_and_folders_fail_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'") as err:
        TextToImagePipeline.from_pretrained("nope")
    assert "\n" not in str(err.value)
    monkeypatch.setitem(BUILTIN_MODELS, "unshipped", "no-such-folder")     # a built-in name whose weights are absent
    with pytest.raises(ModelNotFoundError, match="not available in this installation yet"):
        TextToImagePipeline.from_pretrained("unshipped")
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        TextToImagePipeline.from_pretrained(tmp_path)
