"""The unified model: sequence building, padding, conditioning, cached decoding, losses, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from multimodal.decoders.flow import flow_matching_loss
from multimodal.decoders.text import GenerationConfig
from multimodal.model import IMAGE, QUERY, TEXT, VIDEO, ModelConfig, Segment, UnifiedModel, model_preset

torch.set_num_threads(1)   # many tiny forwards: one intra-op thread is faster on a shared CPU


@pytest.fixture(scope="module")
def model() -> UnifiedModel:
    torch.manual_seed(0)
    return UnifiedModel(model_preset("debug")).eval()


def latents(t: int = 1, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(16, t, h, w, generator=torch.Generator().manual_seed(seed))


def test_config_json_round_trip_and_validation():
    cfg = model_preset("debug")
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.image_head.cond_dim == cfg.backbone.hidden_size == 32
    with pytest.raises(ValueError, match="patch_size"):
        cfg.replace(patch_size=0)
    with pytest.raises(ValueError, match="outside the backbone vocabulary"):
        cfg.replace(token_ids={**cfg.to_dict()["token_ids"], "pad": 10_000})
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({"nonsense": 1})
    spatial = cfg.replace(image_head={**cfg.image_head.to_dict(), "spatial_condition": True})
    assert ModelConfig.from_dict(json.loads(json.dumps(spatial.to_dict()))) == spatial
    with pytest.raises(ValueError, match="num_image_queries=6 is not a square"):
        spatial.replace(num_image_queries=6)
    with pytest.raises(ValueError, match="video_head.spatial_condition: only the image head"):
        cfg.replace(video_head={**cfg.video_head.to_dict(), "max_latent_frames": 1, "spatial_condition": True})
    old = cfg.to_dict()                    # a config.json written before the field: no spatial condition
    del old["image_head"]["spatial_condition"]
    assert ModelConfig.from_dict(old) == cfg


def test_sequence_layout_counts_markers_visual_tokens_and_queries(model):
    ids = model.config.token_ids
    batch = model.build_batch([[Segment.text([ids.bos, 40]), Segment.visual(latents(t=5), "video"),
                                Segment.text([41, 42])],
                               [Segment.text([ids.bos]), Segment.visual(latents(), "image")]], "left")
    n_video = 5 * 4 * 4                      # T' x (8/2) x (8/2) patches of 2x2
    n_image = 4 * 4
    assert batch.inputs_embeds.shape == (2, 2 + 1 + n_video + 1 + 2, 32)
    row0 = batch.modality[0].tolist()
    assert row0.count(VIDEO) == n_video and row0.count(TEXT) == 6
    row1 = batch.modality[1]
    assert (row1 == IMAGE).sum() == n_image and (row1 == -1).sum() == batch.inputs_embeds.shape[1] - n_image - 3
    assert batch.attention_mask[1, 0] == 0 and batch.attention_mask[1, -1] == 1            # left padding
    assert batch.position_ids[1, -1] == n_image + 2                                        # counts real tokens only
    video_routing = batch.routing_ids[0][batch.modality[0] == VIDEO]
    assert (video_routing == ids.begin_video).all()
    q = model.build_batch(model.prompt_samples([[50, 51, 52], [53]], "video"), "right")
    assert q.query_index.shape == (2, model.config.num_video_queries)
    assert (q.modality.gather(1, q.query_index) == QUERY).all()
    assert q.query_index[1, 0] == 1 + 1 + 1                                                # <bos> 53 <begin_video>


def test_visual_tokens_know_time_row_and_column(model):
    z = torch.zeros(1, 16, 2, 4, 4)           # identical content everywhere: only positions differ
    tokens = model.embed_visual(z, "video")[0]                                             # [2*2*2, dim]
    assert tokens.shape == (8, 32)
    dist = torch.cdist(tokens, tokens)
    assert dist[~torch.eye(8, dtype=torch.bool)].min() > 1e-3


def test_batched_conditioning_equals_one_by_one(model):
    prompts = [[60, 61, 62, 63, 64, 65, 66], [70], [80, 81, 82]]
    with torch.no_grad():
        batched = model.encode_prompts(prompts, "image")
        alone = torch.cat([model.encode_prompts([p], "image") for p in prompts])
    assert batched.shape == (3, model.config.num_image_queries, 32)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert (batched[0] - batched[1]).abs().max() > 1e-3                                    # prompts matter


def test_cached_decoding_equals_recomputation(model):
    samples = model.caption_samples([latents(t=2, seed=1)], "video", [[90, 91]])
    cfg = GenerationConfig(max_new_tokens=6)
    with torch.no_grad():
        cached = model.generate_text(samples, cfg).tokens[0]
        recomputed: list[int] = []
        for _ in range(6):
            seq = [samples[0] + ([Segment.text(recomputed)] if recomputed else [])]
            logits = model(model.build_batch(seq)).logits[0, -1]
            recomputed.append(int(logits.argmax()))
    assert cached == recomputed


def test_batched_captioning_equals_one_by_one_greedy_and_sampled(model):
    samples = model.caption_samples([latents(seed=s) for s in range(3)], "image")
    for cfg in (GenerationConfig(max_new_tokens=5),
                GenerationConfig(max_new_tokens=5, do_sample=True, temperature=2.0, top_k=100, top_p=0.95)):
        with torch.no_grad():
            gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
            batched = model.generate_text(samples, cfg, generator=gens).tokens
            alone = [model.generate_text([s], cfg, generator=torch.Generator().manual_seed(10 + i)).tokens[0]
                     for i, s in enumerate(samples)]
        assert batched == alone
        assert len({tuple(t) for t in batched}) >= 2                                          # rows differ


def test_left_padded_text_batch_equals_one_by_one_with_sliding_layers():
    # the backbone's sliding-window layers handle left padding exactly (window >= sequence)
    cfg = model_preset("debug")
    cfg = cfg.replace(backbone=cfg.backbone.replace(layer_types=["sliding_attention"] * 3,
                                                    attention={"sliding_window": 64}).to_dict())
    torch.manual_seed(1)
    m = UnifiedModel(cfg).eval()
    prompts = [[0, 30, 31, 32, 33, 34, 35], [0, 40], [0, 50, 51, 52]]
    samples = [[Segment.text(p)] for p in prompts]
    with torch.no_grad():
        batched = m.generate_text(samples, GenerationConfig(max_new_tokens=6)).tokens
        alone = [m.generate_text([s], GenerationConfig(max_new_tokens=6)).tokens[0] for s in samples]
    assert batched == alone


def test_generation_loss_uses_empty_prompt_when_dropped(model):
    m = UnifiedModel(model_preset("debug").replace(condition_dropout=0.999)).eval()
    x0 = torch.randn(2, 16, 1, 8, 8)
    prompts = [[60, 61], [62]]
    loss = m.generation_loss(prompts, x0, "image", torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert (torch.rand(2, generator=g) < 0.999).all()
    expected = flow_matching_loss(m.image_head, x0, m.encode_prompts([[], []], "image"), generator=g)
    torch.testing.assert_close(loss, expected)


def test_generation_loss_repeats_reuse_one_backbone_pass(model):
    """repeats=K: the conditions of one backbone pass, each repeated K times (sample-major), against K noise draws;
    repeats=1 is the plain loss."""
    x0 = torch.randn(2, 16, 1, 8, 8)
    prompts = [[60, 61], [62]]
    plain = model.generation_loss(prompts, x0, "image", torch.Generator().manual_seed(3))
    assert torch.equal(plain, model.generation_loss(prompts, x0, "image", torch.Generator().manual_seed(3), repeats=1))
    loss = model.generation_loss(prompts, x0, "image", torch.Generator().manual_seed(3), repeats=3)
    g = torch.Generator().manual_seed(3)
    drop = (torch.rand(2, generator=g) < model.config.condition_dropout).tolist()
    cond = model.encode_prompts([[] if d else p for p, d in zip(prompts, drop)], "image").repeat_interleave(3, 0)
    expected = flow_matching_loss(model.image_head, x0.repeat_interleave(3, 0), cond, generator=g)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="repeats"):
        model.generation_loss(prompts, x0, "image", repeats=0)


def test_caption_loss_trains(model):
    torch.manual_seed(0)
    m = UnifiedModel(model_preset("debug"))
    zs, caps = [latents(seed=0), latents(seed=1)], [[100, 101, 102], [103, 104]]
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(10):
        loss = m.caption_loss(zs, "image", caps)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.visual_in.weight.grad.abs().sum() > 0
    assert loss.item() < 0.7 * first


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    assert not [p for p in (tmp_path / "m").iterdir() if p.suffix == ".tmp"]
    again = UnifiedModel.from_pretrained(tmp_path / "m")
    assert again.config == model.config
    batch = model.build_batch(model.caption_samples([latents()], "image", [[5, 6]]))
    with torch.no_grad():
        torch.testing.assert_close(again(batch).logits, model(batch).logits, atol=0, rtol=0)
        c = torch.randn(1, 4, 32)
        x = torch.randn(1, 16, 5, 8, 8)
        torch.testing.assert_close(again.video_head(x, torch.tensor([300.0]), c), model.video_head(x, torch.tensor([300.0]), c))
    with pytest.raises(FileNotFoundError, match="config.json"):
        UnifiedModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_packed_batches_equal_segment_batches(model, kind):
    """The whole-batch builders the trainer uses give exactly the tensors of `build_batch` over segment lists."""
    from multimodal.model import PackedText

    pad, eos = model.config.token_ids.pad, model.config.token_ids.eos
    prompts = [[50, 51, 52], [53], [60, 61, 62, 63, 64]]
    a = model.build_batch(model.prompt_samples(prompts, kind), "right")
    b = model.packed_generation_batch(PackedText.from_lists(prompts, pad), kind)
    for name in ("inputs_embeds", "attention_mask", "position_ids", "routing_ids", "modality", "query_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    z = torch.stack([latents(t=1 if kind == "image" else 2, seed=s) for s in range(3)])
    caps = [[5, 6], [7], [8, 9, 10, 11]]
    a = model.build_batch(model.caption_samples(list(z), kind, [c + [eos] for c in caps]))
    b, labels = model.packed_caption_batch(z, kind, PackedText.from_lists(caps, pad))
    for name in ("inputs_embeds", "attention_mask", "position_ids", "routing_ids", "modality"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    n = z.shape[2] * 16                                                      # visual tokens: T' x (8/2) x (8/2)
    for i, cap in enumerate(caps):                                           # labels: caption <eos>, shifted by one
        assert labels[i][labels[i] != -100].tolist() == cap + [eos]
        assert torch.equal(labels[i, 2 + n:3 + n + len(cap)], torch.tensor(cap + [eos]))
    with torch.no_grad():
        assert torch.equal(model._caption_loss_by_segments(list(z), kind, caps), model.caption_loss(z, kind, caps))


def test_decoding_defaults_save_with_the_model_and_a_stale_file_goes(model, tmp_path):
    from multimodal.decoders.text import GENERATION_CONFIG_FILE

    assert model.generation_config == GenerationConfig()
    model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / GENERATION_CONFIG_FILE).exists()          # plain defaults write no file
    trained = UnifiedModel.from_pretrained(tmp_path / "m")
    trained.generation_config = GenerationConfig(no_immediate_repeat=True)
    trained.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / GENERATION_CONFIG_FILE).read_text()) == {"no_immediate_repeat": True}
    assert UnifiedModel.from_pretrained(tmp_path / "m").generation_config.no_immediate_repeat
    model.save_pretrained(tmp_path / "m")                                   # the same folder, plain defaults again
    assert not (tmp_path / "m" / GENERATION_CONFIG_FILE).exists()
    (tmp_path / "m" / GENERATION_CONFIG_FILE).write_text('{"no_repeat_ngram_size": 2}')
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        UnifiedModel.from_pretrained(tmp_path / "m")


def test_a_spatial_condition_saves_loads_and_conditions_the_image_head(tmp_path):
    """`image_head.spatial_condition`: the head's new projection saves and loads with the model, and once trained
    the image velocity depends on which query state lies over which region."""
    cfg = model_preset("debug")
    torch.manual_seed(0)
    model = UnifiedModel(cfg.replace(image_head={**cfg.image_head.to_dict(), "spatial_condition": True})).eval()
    with torch.no_grad():
        for layer in (model.image_head.spatial_proj, model.image_head.patch_out):
            layer.weight.normal_(std=0.2)
    model.save_pretrained(tmp_path / "m")
    again = UnifiedModel.from_pretrained(tmp_path / "m")
    assert again.config.image_head.spatial_condition
    cond = model.encode_prompts([[5, 6, 7]], "image")                                # [1, Nq, 32]
    x, t = torch.randn(1, 16, 1, 8, 8), torch.tensor([500.0])
    with torch.no_grad():
        v = model.image_head(x, t, cond)
        torch.testing.assert_close(again.image_head(x, t, cond), v, atol=0, rtol=0)
        flipped = model.image_head(x, t, cond.flip(1))                              # the grid turned round
    assert (flipped - v).abs().mean() > 1e-3
