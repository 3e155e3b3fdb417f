"""Scoring folders and caption files, and the per-tag report (table and JSON).

Two evaluations, both driven by JSON-lines files whose rows name a ``file`` (relative to the folder)
and a ``caption`` — the layout ``multimodal world`` writes:

- ``evaluate_media(folder)``: generated images / videos against their prompts. Every file is scored
  by the per-clause rule (``scorer.score_frames``); a file that cannot be read is reported by name
  (``on_error``), counted as a failure, and scoring continues.
- ``evaluate_captions(generated, folder)``: generated captions against the reference captions of the
  folder's media (exact match, slot P/R/F1, BLEU-4, CIDEr-D) and against the pixels themselves
  (``grounded``: the generated caption passes the per-clause rule on the reference video).

Both return a JSON-ready dict with one row per tag (``world.TAGS``) plus ``overall``; tags come from
the prompt (media) or the reference caption (captions). ``format_table`` prints it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from multimodal.data.export import CAPTIONS_FILE
from multimodal.data.files import MediaError, read_jsonl, read_media
from multimodal.data.world import TAGS
from multimodal.eval.captions import caption_tags
from multimodal.eval.metrics import bleu, cider_d, exact_match, slot_scores
from multimodal.eval.scorer import SampleScore, score_frames, unreadable

ErrorSink = Callable[[str], None]


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"no caption file {path}")
    rows = read_jsonl(path)
    for n, row in enumerate(rows, 1):
        if not isinstance(row.get("file"), str) or "caption" not in row:
            raise MediaError(path, f"row {n}: needs a 'file' string and a 'caption'")
    if not rows:
        raise MediaError(path, "no rows")
    return rows


def score_file(path: str | os.PathLike, caption: str, on_error: ErrorSink | None = None) -> SampleScore:
    """Score one image or video file against its caption; an unreadable file is a named failure."""
    try:
        frames = read_media(path)
    except (MediaError, OSError) as exc:
        message = str(exc) if isinstance(exc, MediaError) else f"cannot read {os.fspath(path)}: {exc}"
        if on_error is not None:
            on_error(message)
        return unreadable(caption, message)
    return score_frames(caption, frames)


def tag_rows(tags_per_item: list[tuple[str, ...]], values: dict[str, list[float]]) -> dict[str, dict]:
    """Means of each value list over the items carrying each tag, plus 'overall'."""
    out: dict[str, dict] = {}
    for tag in TAGS + ("overall",):
        idx = [i for i, tags in enumerate(tags_per_item) if tag == "overall" or tag in tags]
        if not idx:
            continue
        row = {"samples": len(idx)}
        for name, vals in values.items():
            row[name] = sum(vals[i] for i in idx) / len(idx)
        out[tag] = row
    return out


def evaluate_media(folder: str | os.PathLike, prompts: str | os.PathLike | None = None, on_error: ErrorSink | None = None) -> dict:
    """Score every file listed in ``prompts`` (default ``folder/captions.jsonl``) against its caption."""
    folder = Path(folder)
    rows = _rows(Path(prompts) if prompts else folder / CAPTIONS_FILE)
    scores = [score_file(folder / row["file"], str(row["caption"]), on_error) for row in rows]
    tags = [s.tags for s in scores]
    report = {
        "mode": "media",
        "folder": str(folder),
        "tags": tag_rows(tags, {"accuracy": [float(s.passed) for s in scores]}),
        "unreadable": [row["file"] for row, s in zip(rows, scores) if s.error],
        "failures": [{"file": row["file"], **s.to_dict()} for row, s in zip(rows, scores) if not s.passed],
    }
    for row in report["tags"].values():
        row["passed"] = round(row["accuracy"] * row["samples"])
    return report


def caption_table(candidates: list[str], references: list[str], extra: dict[str, list[float]] | None = None) -> dict:
    """Per-tag rows (tags of the reference) of exact match, slot P / R / F1 and any `extra` per-caption values
    (means), plus corpus BLEU-4 and CIDEr-D over each tag's subset (IDF from that subset)."""
    values: dict[str, list[float]] = {k: [] for k in ("exact", "slot_precision", "slot_recall", "slot_f1")}
    for cand, ref in zip(candidates, references):
        p, r, f = slot_scores(cand, ref)
        for name, v in zip(values, (exact_match(cand, ref), p, r, f)):
            values[name].append(float(v))
    values.update(extra or {})
    tags = [caption_tags(ref) for ref in references]
    table = tag_rows(tags, values)
    for tag, row in table.items():
        idx = [i for i, t in enumerate(tags) if tag == "overall" or tag in t]
        sub_c, sub_r = [candidates[i] for i in idx], [[references[i]] for i in idx]
        row["bleu4"] = bleu(sub_c, sub_r)
        row["cider_d"] = cider_d(sub_c, sub_r)
    return table


def evaluate_captions(
    generated: str | os.PathLike,
    folder: str | os.PathLike,
    references: str | os.PathLike | None = None,
    on_error: ErrorSink | None = None,
) -> dict:
    """Score generated captions (rows of ``generated``) against the reference captions and pixels."""
    folder = Path(folder)
    refs = {row["file"]: str(row["caption"]) for row in _rows(Path(references) if references else folder / CAPTIONS_FILE)}
    rows = _rows(Path(generated))
    cands, golds, grounded = [], [], []
    missing = []
    for row in rows:
        cand = row["caption"] if isinstance(row["caption"], str) else ""
        gold = refs.get(row["file"])
        if gold is None:
            message = f"{row['file']}: no reference caption in {folder / CAPTIONS_FILE}"
            if on_error is not None:
                on_error(message)
            missing.append(row["file"])
            continue
        grounded.append(float(score_file(folder / row["file"], cand, on_error).passed))
        cands.append(cand)
        golds.append(gold)
    if not cands:
        raise MediaError(generated, f"none of its {len(rows)} captions has a reference in {folder}")
    table = caption_table(cands, golds, {"grounded": grounded})
    return {"mode": "captions", "folder": str(folder), "generated": str(generated), "tags": table, "missing_references": missing}


def format_table(report: dict) -> str:
    """The report's per-tag rows as a fixed-width text table (percentages, CIDEr-D as a number)."""
    rows = report["tags"]
    columns = [c for c in next(iter(rows.values())) if c not in ("samples", "passed")]
    header = f"{'tag':<10}{'samples':>8}" + "".join(f"{c:>16}" for c in columns)
    lines = [header, "-" * len(header)]
    for tag, row in rows.items():
        cells = "".join(f"{row[c]:>16.2f}" if c == "cider_d" else f"{100 * row[c]:>15.1f}%" for c in columns)
        lines.append(f"{tag:<10}{row['samples']:>8}{cells}")
    unreadable_files = report.get("unreadable") or []
    if unreadable_files:
        lines.append(f"unreadable: {len(unreadable_files)} file(s), counted as failures")
    return "\n".join(lines)
