"""User (image or video, caption) pairs: folder and JSON-lines layouts, unreadable files skipped with a counted
warning, item layout, and training the LM on a user folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from multimodal.data.user_data import UserDataWarning, UserPairsDataset, scan_pairs
from multimodal.io import write_image, write_video


def _image(h: int = 40, w: int = 60, colour=(255, 0, 0)) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, w // 2:] = colour
    return img


def _folder(root, with_bad: bool = True):
    root.mkdir()
    write_image(root / "red.png", _image())
    (root / "red.txt").write_text("a red half\n")
    frames = np.stack([np.roll(_image(32, 48, (0, 0, 255)), 2 * t, axis=1) for t in range(20)])
    write_video(root / "sub" / "clip.mp4", frames, fps=8)
    (root / "sub" / "clip.txt").write_text("a blue half moves right")
    if with_bad:
        (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))   # header, then garbage
        (root / "corrupt.txt").write_text("never used")
        (root / "empty.mp4").write_bytes(b"")
        (root / "empty.txt").write_text("never used")
        write_image(root / "nocaption.png", _image())
        (root / "notes.md").write_text("not media: ignored")
    return root


def test_folder_skips_unreadable_files_with_a_count(tmp_path):
    with pytest.warns(UserDataWarning, match=r"skipped 3 of 5 pairs"):
        data = UserPairsDataset(_folder(tmp_path / "d"))
    assert len(data) == 2
    reasons = dict((str(p).rsplit("/", 1)[-1], r) for p, r in data.skipped)
    assert set(reasons) == {"corrupt.png", "empty.mp4", "nocaption.png"}
    assert "empty" in reasons["empty.mp4"] and "no caption file" in reasons["nocaption.png"]
    assert [data.caption(i) for i in range(2)] == ["a red half", "a blue half moves right"]


def test_items_have_the_world_layout(tmp_path):
    data = UserPairsDataset(_folder(tmp_path / "d", with_bad=False), size=32, num_frames=9)
    image, video = data[0], data[1]
    assert image["pixels"].shape == (3, 1, 32, 32) and image["kind"] == "image"
    assert video["pixels"].shape == (3, 9, 32, 32) and video["kind"] == "video"
    assert image["pixels"].dtype == torch.float32 and 0.0 <= float(image["pixels"].min()) <= 1.0
    # centre crop of a 40x60 image whose right half is red: the crop's right part is red, its left black
    assert float(image["pixels"][0, 0, 16, -1]) > 0.9 and float(image["pixels"][0, 0, 16, 0]) < 0.1


def test_jsonl_with_relative_paths_and_bad_lines(tmp_path):
    root = _folder(tmp_path / "d", with_bad=False)
    lines = [json.dumps({"image": "red.png", "caption": "first"}),
             "{not json",
             json.dumps({"video": "sub/clip.mp4", "text": "second"}),
             json.dumps({"file_name": "missing.png", "caption": "gone"}),
             json.dumps({"caption": "no media key"})]
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserDataWarning, match="skipped 3 of 5"):
        data = UserPairsDataset(root / "pairs.jsonl")
    assert [data.caption(i) for i in range(len(data))] == ["first", "second"]
    where = [w for w, _ in data.skipped]
    assert where[0].endswith("pairs.jsonl:2") and where[1].endswith("pairs.jsonl:5") and "missing.png" in where[2]


def test_metadata_jsonl_in_a_folder_wins(tmp_path):
    root = _folder(tmp_path / "d", with_bad=False)
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "red.png", "text": "from metadata"}) + "\n")
    pairs, skipped = scan_pairs(root)
    assert [p.caption for p in pairs] == ["from metadata"] and not skipped


def test_no_usable_pair_is_an_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "x.png").write_bytes(b"nope")
    (root / "x.txt").write_text("caption")
    with pytest.warns(UserDataWarning), pytest.raises(ValueError, match="no usable .* pairs .*x.png"):
        UserPairsDataset(root)
    with pytest.raises(FileNotFoundError, match="user data not found"):
        UserPairsDataset(tmp_path / "absent")


def test_train_lm_on_a_user_folder(tmp_path):
    from multimodal.training.config import TrainConfig
    from multimodal.training.trainer import Trainer

    root = tmp_path / "pets"
    root.mkdir()
    for i in range(24):
        write_image(root / f"{i}.png", _image(16, 16))
        (root / f"{i}.txt").write_text(f"a photo of pet number {i % 6}")
    cfg = TrainConfig(preset="debug", data=str(root), vocab_size=300, seq_len=16, micro_batch_size=2, max_steps=2,
                      warmup_steps=1, eval_batches=1, eval_every=0, progress=False)
    result = Trainer(cfg, tmp_path / "out", log=lambda s: None).train()
    assert result.step == 2 and "eval/loss/text" in result.eval              # index 19 is the validation pair
