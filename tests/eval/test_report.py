"""`multimodal eval`: per-tag tables and JSON for folders of media and for caption files."""

import json

from multimodal.cli import main
from multimodal.data.export import WorldExportConfig, write_world
from multimodal.data.files import write_jsonl


def _world(tmp_path, images=12, videos=3):
    out = tmp_path / "w"
    rows = write_world(out, WorldExportConfig(split="test", images=images, videos=videos))
    return out, rows


def test_eval_scores_the_world_folder_and_survives_a_broken_file(tmp_path, capsys):
    out, rows = _world(tmp_path)
    assert main(["eval", str(out), "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tags"]["overall"] == {"samples": 15, "accuracy": 1.0, "passed": 15}
    assert report["tags"]["motion"]["samples"] == 3 and "overall" in printed and "100.0%" in printed
    # break one video and one image: both named on stderr, both failures, the rest still scored
    video = next(r["file"] for r in rows if r["file"].endswith(".mp4"))
    image = rows[0]["file"]
    (out / video).write_bytes(b"\x00" * 100)
    (out / image).unlink()
    assert main(["eval", str(out), "--json", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert video in err and image in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tags"]["overall"]["passed"] == 13 and set(report["unreadable"]) == {video, image}


def test_eval_with_custom_prompts_counts_wrong_prompts_as_failures(tmp_path, capsys):
    out, rows = _world(tmp_path, images=4, videos=0)
    prompts = [{"file": r["file"], "caption": r["caption"]} for r in rows]
    prompts[0]["caption"] = "a purple thing"  # outside the grammar
    prompts[1]["caption"] = "three large white digit 4s"
    write_jsonl(tmp_path / "p.jsonl", prompts)
    assert main(["eval", str(out), "--prompts", str(tmp_path / "p.jsonl"), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tags"]["overall"]["passed"] == 2
    assert report["failures"][0]["failed"] == ["grammar"]


def test_eval_of_generated_captions(tmp_path, capsys):
    out, rows = _world(tmp_path, images=6, videos=4)
    gen = []
    for i, r in enumerate(rows):
        caption = r["caption"] if i % 2 == 0 else "not a caption at all"
        gen.append({"file": r["file"], "caption": caption})
    gen.append({"file": "videos/missing.mp4", "caption": "a red square stays still"})
    write_jsonl(tmp_path / "gen.jsonl", gen)
    assert main(["eval", str(out), "--captions", str(tmp_path / "gen.jsonl"), "--json", str(tmp_path / "r.json")]) == 0
    assert "missing.mp4" in capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    overall = report["tags"]["overall"]
    assert overall["samples"] == 10
    assert overall["exact"] == overall["slot_f1"] == overall["grounded"] == 0.5
    assert 0.0 < overall["bleu4"] < 1.0 and overall["cider_d"] > 0.0
    assert report["missing_references"] == ["videos/missing.mp4"]


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "captions.jsonl" in capsys.readouterr().err
    (tmp_path / "empty" / "captions.jsonl").write_text("{broken\n")
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "line 1" in capsys.readouterr().err
