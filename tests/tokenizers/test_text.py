"""Byte-level BPE text tokenizer: training, specials, Unicode round trips, save/load, DeepSeek files."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from multimodal.tokenizers.text import DEEPSEEK_TEXT_ROLES, SPECIAL_ROLES, TextTokenizer

COLOURS = ["red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange"]
SHAPES = ["square", "circle", "triangle", "digit 3", "digit 7"]


def captions(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = f"{rng.choice(COLOURS)} {rng.choice(SHAPES)}"
        b = f"{rng.choice(COLOURS)} {rng.choice(SHAPES)}"
        out.append(rng.choice([f"a large {a}", f"a {a} to the left of a {b}", f"a small {a} moves up", f"two small {a}s"]))
    return out


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(captions(), vocab_size=400)


def test_specials_have_fixed_ids_and_roles(tok):
    assert [tok.ids[r] for r in SPECIAL_ROLES] == list(range(9))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.token_id("begin_video") == 5 and tok.token_id("<|video_gen|>") == 8
    assert 280 <= tok.vocab_size <= 400


def test_bpe_compresses_the_caption_language(tok):
    text = "a yellow triangle to the left of a cyan circle"
    ids = tok.encode(text)
    assert len(ids) <= 14 < len(text.encode()) // 3  # merged words, not bytes
    assert tok.decode(ids) == text


def _random_unicode(rng: random.Random, n: int) -> str:
    pools = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
             (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x300, 0x36F),
             (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    chars = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        c = rng.randint(lo, hi)
        if 0xD800 <= c <= 0xDFFF:  # lone surrogates are not valid in UTF-8 strings
            c = 0xFFFD
        chars.append(chr(c))
    return "".join(chars)


def test_any_unicode_round_trips(tok):
    rng = random.Random(7)
    samples = [_random_unicode(rng, rng.randint(0, 60)) for _ in range(300)]
    samples += ["", " ", "\n\n\t", "  leading and trailing  ", "e\u0301 vs \u00e9", "👩‍👩‍👧‍👦🏳️‍🌈", "\u200b\ufeff\u0000",
                "日本語のテキスト", "مرحبا بالعالم", "a" * 500, "<|pad|> <|begin_image|> typed by a user"]
    for s in samples:
        ids = tok.encode(s, add_bos=True, add_eos=True)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == s, repr(s)


def test_special_strings_in_user_text_stay_text(tok):
    text = "say <|end_of_text|> now"
    plain = tok.encode(text)
    assert tok.eos_id not in plain and tok.decode(plain) == text
    marked = tok.encode("<|begin_image|><|image_gen|><|end_image|>", allow_special=True)
    assert marked == [3, 7, 4]
    assert tok.decode(marked) == "" and tok.decode(marked, skip_special_tokens=False) == "<|begin_image|><|image_gen|><|end_image|>"


def test_batch_call_pads_with_mask(tok):
    out = tok(["a red circle", "two small blue triangles moves up"], max_length=6)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape and ids.dtype == torch.long
    assert ids.shape[1] <= 6
    assert ids[0, 0] == tok.bos_id and (ids[mask == 0] == tok.pad_id).all()
    lengths = mask.sum(1)
    assert ids[0, lengths[0] - 1] == tok.eos_id and ids[1, lengths[1] - 1] == tok.eos_id
    left = tok(["a red circle", "two small blue triangles"], pad_to="left")
    assert left["attention_mask"][:, -1].all()


def test_save_and_load(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    assert path.name == "tokenizer.json" and json.loads(path.read_text())["model"]["type"] == "BPE"
    again = TextTokenizer.from_file(tmp_path / "tok")
    text = "a magenta digit 3 moves left 🎉"
    assert again.encode(text) == tok.encode(text) and again.ids == tok.ids
    with pytest.raises(FileNotFoundError):
        TextTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        TextTokenizer.from_file(tmp_path / "broken.json")


def _deepseek_style_tokenizer_json(path) -> None:
    """A tokenizer.json shaped like DeepSeek-V3's: byte-level BPE, its own special names first."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    from tokenizers import trainers

    specials = [DEEPSEEK_TEXT_ROLES["bos"], DEEPSEEK_TEXT_ROLES["eos"], "<｜fim▁hole｜>", DEEPSEEK_TEXT_ROLES["pad"]]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(captions(200, seed=3), trainer=trainer)
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    tok.save(str(path))


def test_loads_a_deepseek_tokenizer_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    _deepseek_style_tokenizer_json(path)
    base_size = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    tok = TextTokenizer.from_file(path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 3)  # DeepSeek's own text specials
    media = [tok.ids[r] for r in ("begin_image", "end_image", "begin_video", "end_video", "image_gen", "video_gen")]
    assert sorted(media) == list(range(base_size, base_size + 6))  # appended after its vocabulary
    assert tok.vocab_size == base_size + 6
    text = "a red circle 日本 <think> x"
    assert tok.decode(tok.encode(text, add_bos=True)) == text
    ids = [tok.ids["begin_image"], *tok.encode("hi"), tok.ids["end_image"]]
    assert tok.decode(ids, skip_special_tokens=False) == "<|begin_image|>hi<|end_image|>"
