"""`init_from` (warm start): a run starts from a trained model's weights, tokenizer and autoencoder, widened to
fp32 when stored in bf16; a resumed warm-started run continues from its checkpoint, not from the start weights;
architecture overrides that disagree with the checkpoint, a wrong path and an autoencoder of another latent width
are errors naming them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from multimodal.cli import main
from multimodal.decoders.text import GenerationConfig
from multimodal.pipelines.base import ModelNotFoundError, MultimodalPipeline, cast_keeping_fp32
from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.training.media_tasks import MEDIA_TASKS
from multimodal.training.trainer import Trainer

from .conftest import TINY

QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def bf16_pipeline(tmp_path_factory):
    """A 2-update unified-model run's pipeline (small autoencoder), saved again with its weights cast to bf16 and
    the decoding defaults of the built-in model (`generation_config.json`), the way it ships."""
    root = tmp_path_factory.mktemp("warm")
    torch.manual_seed(0)
    ae = root / "ae.safetensors"
    CausalAutoencoder(AutoencoderConfig(channels=(8, 16, 16), latent_channels=16)).save_pretrained(ae)
    cfg = _media(autoencoder=str(ae), max_steps=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, root / "run", **QUIET).train()
    finally:
        torch.set_num_threads(before)
    pipe = MultimodalPipeline.from_pretrained(root / "run" / "pipeline")
    cast_keeping_fp32(pipe.model, torch.bfloat16)
    pipe.model.generation_config = GenerationConfig(no_immediate_repeat=True)
    return pipe.save_pretrained(root / "bf16")


def _media(**changes):
    from multimodal.training.config import TrainConfig
    tasks = {"text": 1.0, **{name: 1.0 for name in MEDIA_TASKS}}
    return TrainConfig(**{**TINY, "tasks": tasks, "grad_accum": 3, **changes})


def _assert_same_image_flow_loss(plain: Trainer, grown: Trainer) -> None:
    """The two runs' models give the same image flow loss on one batch (same latents, prompts and noise)."""
    ids = plain.model.config.token_ids
    z = torch.randn(2, 16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses = [t.model.generation_loss([[ids.bos, 20, 21]] * 2, z, "image",
                                          generator=torch.Generator().manual_seed(1)) for t in (plain, grown)]
    assert torch.equal(*losses)


def test_a_media_run_starts_from_the_pipeline(tmp_path, bf16_pipeline):
    pipe = MultimodalPipeline.from_pretrained(bf16_pipeline)
    stored = load_file(str(bf16_pipeline / "model" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} >= {torch.bfloat16, torch.float32}
    # preset "tiny" and another vocabulary would be a different model: the checkpoint's architecture wins
    cfg = _media(init_from=str(bf16_pipeline), preset="tiny", vocab_size=512, seed=5, max_steps=2)
    trainer = Trainer(cfg, tmp_path / "ft", **QUIET)
    assert set(stored) == set(trainer.model.state_dict())
    for key, value in stored.items():
        mine = trainer.model.state_dict()[key]
        assert mine.dtype == (torch.float32 if value.is_floating_point() else value.dtype), key
        assert torch.equal(mine, value.float() if value.is_floating_point() else value), key
    assert trainer.model.config.to_dict() == pipe.model.config.to_dict()
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == \
        (bf16_pipeline / "tokenizer" / "tokenizer.json").read_text()
    for key, value in pipe.vae.state_dict().items():           # autoencoder="" takes the pipeline's
        assert torch.equal(trainer.autoencoder.state_dict()[key], value), key
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(start[k], v) for k, v in trainer.model.state_dict().items())
    out = MultimodalPipeline.from_pretrained(tmp_path / "ft" / "pipeline")
    assert out.model.config.to_dict() == pipe.model.config.to_dict()
    assert out.model.generation_config == pipe.model.generation_config == GenerationConfig(no_immediate_repeat=True)


def test_resume_continues_from_the_checkpoint_not_the_start(tmp_path, bf16_pipeline):
    cfg = _media(init_from=str(bf16_pipeline), max_steps=4)
    first = Trainer(cfg, tmp_path / "ft", **QUIET)
    for _ in range(2):
        first.train_step()
    first.save()
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}
    again = Trainer(cfg, tmp_path / "ft", resume=True, **QUIET)
    assert again.step == 2
    for key, value in trained.items():
        assert torch.equal(again.model.state_dict()[key], value), key


def test_a_text_run_starts_from_a_text_model_folder(tmp_path, tiny_config):
    first = Trainer(tiny_config.replace(max_steps=2), tmp_path / "lm", **QUIET)
    first.train()
    source = tmp_path / "lm" / "model"
    warm = Trainer(tiny_config.replace(init_from=str(source), seed=3), tmp_path / "ft", **QUIET)
    for key, value in first.model.state_dict().items():
        assert torch.equal(warm.model.state_dict()[key], value), key
    scratch = Trainer(tiny_config.replace(seed=3), tmp_path / "scratch", **QUIET)
    assert any(not torch.equal(scratch.model.state_dict()[k], v) for k, v in warm.model.state_dict().items())
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()


def test_disagreeing_overrides_name_the_fields(tmp_path, bf16_pipeline):
    width = json.loads((bf16_pipeline / "model" / "config.json").read_text())["image_head"]["width"]
    cfg = _media(init_from=str(bf16_pipeline), model={"hidden_size": 48, "attention": {"sliding_window": 7}},
                 flow_head={"image": {"width": width * 2}})
    with pytest.raises(ValueError) as err:
        Trainer(cfg, tmp_path / "ft", **QUIET)
    for part in ("model.hidden_size: 32 -> 48", "model.attention.sliding_window", f"flow_head.image.width: {width}"):
        assert part in str(err.value)
    # overrides equal to the checkpoint's are accepted
    Trainer(_media(init_from=str(bf16_pipeline), model={"hidden_size": 32}), tmp_path / "ok", **QUIET)


def test_bad_start_points_are_named(tmp_path, bf16_pipeline, tiny_config):
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        Trainer(_media(init_from=str(tmp_path / "nowhere")), tmp_path / "a", **QUIET)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Trainer(tiny_config.replace(init_from=str(tmp_path)), tmp_path / "b", **QUIET)
    narrow = tmp_path / "ae8.safetensors"
    CausalAutoencoder(AutoencoderConfig(channels=(8, 16, 16), latent_channels=8)).save_pretrained(narrow)
    with pytest.raises(ValueError, match="8 latent channels, but the init_from model"):
        Trainer(_media(init_from=str(bf16_pipeline), autoencoder=str(narrow)), tmp_path / "c", **QUIET)


def test_the_cli_flag(tmp_path, bf16_pipeline, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(_media(max_steps=1).to_dict()))
    out = tmp_path / "ft"
    assert main(["train", "--config", str(cfg), "--init-from", str(bf16_pipeline), "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "train_config.json").read_text())["init_from"] == str(bf16_pipeline)
    assert f"starting from the weights of {bf16_pipeline}" in capsys.readouterr().out
    assert main(["train", "autoencoder", "--init-from", "shapes", "--out", str(tmp_path / "ae")]) == 2
    assert "--init-from is not used by autoencoder training" in capsys.readouterr().err


def test_a_visual_stem_grows_on_a_checkpoint_without_one(tmp_path, bf16_pipeline):
    """`visual_stem` with `init_from`: the checkpoint's weights everywhere else, a new stem whose zero projection
    leaves the caption loss of the first batch as the checkpoint's; training moves it; the run's pipeline keeps it;
    a stem of another width on a checkpoint that has one, or on a text-only run, is refused by name."""
    plain = Trainer(_media(init_from=str(bf16_pipeline), max_steps=3), tmp_path / "plain", **QUIET)
    grown = Trainer(_media(init_from=str(bf16_pipeline), max_steps=3, visual_stem=8), tmp_path / "grown", **QUIET)
    assert plain.model.visual_stem is None and grown.model.config.visual_stem == 8
    plain_state, grown_state = plain.model.state_dict(), grown.model.state_dict()
    assert set(grown_state) - set(plain_state) == {k for k in grown_state if k.startswith("visual_stem.")}
    for key, value in plain_state.items():
        assert torch.equal(grown_state[key], value), key
    ids = plain.model.config.token_ids
    z = torch.randn(2, 16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses = [t.model.caption_loss(z, "image", [[ids.bos, 20, 21, ids.eos]] * 2) for t in (plain, grown)]
    assert torch.equal(*losses)
    start = {k: v.clone() for k, v in grown_state.items() if k.startswith("visual_stem.")}
    grown.train()
    assert all(not torch.equal(start[k], grown.model.state_dict()[k]) for k in start)
    out = MultimodalPipeline.from_pretrained(tmp_path / "grown" / "pipeline")
    assert out.model.config.visual_stem == 8
    again = Trainer(_media(init_from=str(tmp_path / "grown" / "pipeline"), visual_stem=8), tmp_path / "same", **QUIET)
    assert torch.equal(again.model.visual_stem.out.weight, out.model.visual_stem.out.weight.float())
    with pytest.raises(ValueError, match="has a visual stem of 8 channels, the run asks for visual_stem=16"):
        Trainer(_media(init_from=str(tmp_path / "grown" / "pipeline"), visual_stem=16), tmp_path / "wider", **QUIET)
    with pytest.raises(ValueError, match="visual_stem=8: the stem reads latents, but no task of this run sees"):
        Trainer(_media(tasks={"text": 1.0}, visual_stem=8), tmp_path / "text", **QUIET)
    from multimodal.training.config import TrainConfig
    with pytest.raises(ValueError, match="visual_stem must be an integer >= 0"):
        TrainConfig(visual_stem=-2)


def test_a_grown_stem_takes_pretrained_convolutions(tmp_path, bf16_pipeline):
    """`visual_stem_init`: a new stem's convolutions come from `multimodal train stem`'s file, its projection stays
    zero (the checkpoint's function is unchanged); a run without a stem, another width or another autoencoder's
    stem are refused by name."""
    from multimodal.training.stem_pretraining import StemPretrainConfig, pretrain_stem

    ae = bf16_pipeline.parent / "ae.safetensors"
    pretrain_stem(StemPretrainConfig(width=8, images=16, videos=0, validation_images=8, validation_videos=0,
                                     max_steps=4, batch_size=8, eval_every=4, autoencoder=str(ae)),
                  tmp_path / "stem", log=lambda s: None)
    stem_file = str(tmp_path / "stem" / "visual_stem.safetensors")
    stored = load_file(stem_file)
    plain = Trainer(_media(init_from=str(bf16_pipeline)), tmp_path / "plain", **QUIET)
    grown = Trainer(_media(init_from=str(bf16_pipeline), visual_stem=8, visual_stem_init=stem_file),
                    tmp_path / "grown", **QUIET)
    for key, value in stored.items():
        assert torch.equal(grown.model.visual_stem.get_parameter(key), value), key
    assert not grown.model.visual_stem.out.weight.any()
    ids = plain.model.config.token_ids
    z = torch.randn(2, 16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses = [t.model.caption_loss(z, "image", [[ids.bos, 20, 21, ids.eos]] * 2) for t in (plain, grown)]
    assert torch.equal(*losses)
    frozen = Trainer(_media(init_from=str(bf16_pipeline), visual_stem=8, visual_stem_init=stem_file, max_steps=2,
                            freeze=["visual_stem.conv1", "visual_stem.conv2"]), tmp_path / "frozen", **QUIET)
    frozen.train()                                  # `freeze`: the pretrained convolutions stay, the projection moves
    for key, value in stored.items():
        assert torch.equal(frozen.model.visual_stem.get_parameter(key), value), key
    assert frozen.model.visual_stem.out.weight.any()
    with pytest.raises(ValueError, match="freeze 'visual_stem.conv3': no parameter of the model is named so"):
        Trainer(_media(init_from=str(bf16_pipeline), visual_stem=8, freeze=["visual_stem.conv3"]), tmp_path / "f3",
                **QUIET)
    with pytest.raises(ValueError, match="visual_stem_init .*: the model has no visual stem"):
        Trainer(_media(init_from=str(bf16_pipeline), visual_stem_init=stem_file), tmp_path / "none", **QUIET)
    with pytest.raises(ValueError, match="a stem of 8 channels over 16 latent channels, the model's has 16"):
        Trainer(_media(init_from=str(bf16_pipeline), visual_stem=16, visual_stem_init=stem_file), tmp_path / "w",
                **QUIET)
    other = tmp_path / "other_ae.safetensors"
    torch.manual_seed(1)
    CausalAutoencoder(AutoencoderConfig(channels=(8, 16, 16), latent_channels=16)).save_pretrained(other)
    with pytest.raises(ValueError, match="pretrained on another autoencoder's latents than this run's"):
        Trainer(_media(visual_stem=8, visual_stem_init=stem_file, autoencoder=str(other)), tmp_path / "ae", **QUIET)


def test_heads_only_stage_trains_the_flow_heads_alone(tmp_path, bf16_pipeline):
    """`HEADS_ONLY_FREEZE` (stage 9's `freeze`) names every part of the model but the two flow heads: a generation
    run with it moves both heads and leaves every other parameter exactly as loaded, stem included."""
    from multimodal.training.config import HEADS_ONLY_FREEZE

    run = Trainer(_media(init_from=str(bf16_pipeline), visual_stem=8, max_steps=2, freeze=list(HEADS_ONLY_FREEZE),
                         tasks={"text_to_image": 1.0, "text_to_video": 1.0}, flow_repeats={"image": 4, "video": 2}),
                  tmp_path / "heads", **QUIET)
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("image_head.", "video_head.")) for n in trainable)
    start = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    run.train()
    moved = {n for n, p in run.model.named_parameters() if not torch.equal(p.detach(), start[n])}
    assert {n.split(".")[0] for n in moved} == {"image_head", "video_head"}


def test_a_spatial_condition_grows_on_a_checkpoint_without_one(tmp_path, bf16_pipeline):
    """`flow_head={"image": {"spatial_condition": true}}` with `init_from`: the checkpoint's weights everywhere else,
    a new zero projection that leaves the first batch's image flow loss as the checkpoint's; training moves it; the
    run's pipeline keeps it; switching it off on a model that has one is refused by name."""
    spatial = {"image": {"spatial_condition": True}}
    plain = Trainer(_media(init_from=str(bf16_pipeline), max_steps=3), tmp_path / "plain", **QUIET)
    grown = Trainer(_media(init_from=str(bf16_pipeline), max_steps=3, flow_head=spatial,
                           tasks={"text_to_image": 1.0}), tmp_path / "grown", **QUIET)
    assert grown.model.config.image_head.spatial_condition and not plain.model.config.image_head.spatial_condition
    plain_state, grown_state = plain.model.state_dict(), grown.model.state_dict()
    assert set(grown_state) - set(plain_state) == {"image_head.spatial_proj.weight", "image_head.spatial_proj.bias"}
    for key, value in plain_state.items():
        assert torch.equal(grown_state[key], value), key
    _assert_same_image_flow_loss(plain, grown)
    start = grown.model.image_head.spatial_proj.weight.clone()
    grown.train()
    assert not torch.equal(start, grown.model.image_head.spatial_proj.weight)
    out = MultimodalPipeline.from_pretrained(tmp_path / "grown" / "pipeline")
    assert out.model.config.image_head.spatial_condition
    again = Trainer(_media(init_from=str(tmp_path / "grown" / "pipeline"), flow_head=spatial), tmp_path / "same",
                    **QUIET)
    assert torch.equal(again.model.image_head.spatial_proj.weight, out.model.image_head.spatial_proj.weight.float())
    with pytest.raises(ValueError, match="flow_head.video.spatial_condition: False -> True"):   # images only
        Trainer(_media(init_from=str(bf16_pipeline), flow_head={"spatial_condition": True}), tmp_path / "both",
                **QUIET)
    with pytest.raises(ValueError, match="flow_head.image.spatial_condition: True -> False"):
        Trainer(_media(init_from=str(tmp_path / "grown" / "pipeline"),
                       flow_head={"image": {"spatial_condition": False}}), tmp_path / "off", **QUIET)


def test_a_head_grows_deeper_on_a_checkpoint(tmp_path, bf16_pipeline):
    """`flow_head={"image": {"depth": d}}` above the checkpoint's head's depth with `init_from`: the checkpoint's
    weights everywhere else, new blocks after its own whose zero adaLN gates leave the first batch's image flow loss
    as the checkpoint's; training moves them; the run's pipeline keeps them; a shallower head is refused by name."""
    have = MultimodalPipeline.from_pretrained(bf16_pipeline).model.config.image_head.depth
    logs: list[str] = []
    plain = Trainer(_media(init_from=str(bf16_pipeline), max_steps=3), tmp_path / "plain", **QUIET)
    grown = Trainer(_media(init_from=str(bf16_pipeline), max_steps=3, flow_head={"image": {"depth": have + 2}},
                           tasks={"text_to_image": 1.0}), tmp_path / "grown", log=logs.append)
    assert grown.model.config.image_head.depth == have + 2 and grown.model.config.video_head.depth == \
        plain.model.config.video_head.depth
    plain_state, grown_state = plain.model.state_dict(), grown.model.state_dict()
    new = {k for k in grown_state if k.startswith((f"image_head.blocks.{have}.", f"image_head.blocks.{have + 1}."))}
    assert new and set(grown_state) - set(plain_state) == new
    for key, value in plain_state.items():
        assert torch.equal(grown_state[key], value), key
    count = sum(grown_state[k].numel() for k in new)
    assert any(f"2 new block(s) after the {have} of its image head ({count:,} parameters)" in line for line in logs)
    _assert_same_image_flow_loss(plain, grown)
    start = grown.model.image_head.blocks[have].ada.weight.clone()
    grown.train()
    assert not torch.equal(start, grown.model.image_head.blocks[have].ada.weight)
    out = MultimodalPipeline.from_pretrained(tmp_path / "grown" / "pipeline")
    assert out.model.config.image_head.depth == have + 2
    with pytest.raises(ValueError, match=f"flow_head.image.depth: {have + 2} -> {have}"):
        Trainer(_media(init_from=str(tmp_path / "grown" / "pipeline"), flow_head={"image": {"depth": have}}),
                tmp_path / "shallower", **QUIET)
