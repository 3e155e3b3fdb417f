"""The per-clause pass/fail rule: does every clause of a caption hold in the pixels?

A caption is parsed into clauses (``captions.parse_caption``); the frames are parsed into objects
(``scene.parse_frames``); the sample passes only if every clause holds:

- **images** (one frame): the scene holds exactly the captioned number of objects; each has the
  captioned colour, shape and (if stated) size; a relation holds between the two centres by the
  world's rule (the axis with the larger offset wins); a count needs exactly n matching objects.
- **videos** (two or more frames): every frame holds exactly the captioned number of objects;
  objects are linked across frames by colour and shape (then by distance to their previous centre);
  a track's colour, shape and size are its majority over frames (so one frame misread by a codec
  does not flip a digit); its motion is the least-squares slope of its centre over the frames:
  |slope| ≥ 1 px/frame on the dominant axis gives the direction, otherwise it stays still.

A caption outside the grammar fails its 'grammar' clause; nothing here raises on bad text.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from multimodal.data.world import IMAGE_KINDS, WorldSample, relation_of
from multimodal.eval.captions import parse_caption
from multimodal.eval.scene import SceneObject, parse_frames

MOTION_SLOPE = 1.0  # px/frame


@dataclass
class SampleScore:
    """The verdict on one sample: ``passed`` and the clauses that failed, with reasons."""

    caption: str
    passed: bool
    kind: str | None
    tags: tuple[str, ...]
    failed: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    error: str | None = None

    def fail(self, clause: str, detail: str) -> None:
        self.passed = False
        self.failed.append(clause)
        self.details.append(f"{clause}: {detail}")

    def to_dict(self) -> dict:
        return {
            "caption": self.caption,
            "passed": self.passed,
            "kind": self.kind,
            "tags": list(self.tags),
            "failed": self.failed,
            "details": self.details,
            "error": self.error,
        }


def unreadable(caption: str, error: str) -> SampleScore:
    """The score of a sample whose media could not be read: a failure that names the problem."""
    clauses = parse_caption(caption)
    score = SampleScore(caption, False, clauses.kind if clauses else None, clauses.tags() if clauses else (), error=error)
    score.fail("file", error)
    return score


def _matches(obj: SceneObject, colour: str, shape: str, size: str | None) -> bool:
    return obj.colour == colour and obj.shape == shape and (size is None or obj.size == size)


def _describe(obj: SceneObject) -> str:
    return f"{obj.size} {obj.colour} {obj.shape} at ({obj.centre[0]:.0f}, {obj.centre[1]:.0f})"


def _score_image(score: SampleScore, clauses, objects: list[SceneObject]) -> None:
    expected = sum(o.count for o in clauses.objects)
    if len(objects) != expected:
        found = ", ".join(_describe(o) for o in objects) or "nothing"
        score.fail("count", f"expected {expected} object(s), found {len(objects)}: {found}")
        return
    if clauses.kind in ("single", "count"):
        c = clauses.objects[0]
        for attr in ("colour", "shape", "size"):
            want = getattr(c, attr)
            if want is None:
                continue
            got = [getattr(o, attr) for o in objects]
            if any(g != want for g in got):
                score.fail(attr, f"expected {want}, found {', '.join(got)}")
        return
    # relation: some assignment of the two objects to the two nouns must match and satisfy the relation
    a, b = clauses.objects
    best = None
    for oa, ob in itertools.permutations(objects, 2):
        if _matches(oa, a.colour, a.shape, a.size) and _matches(ob, b.colour, b.shape, b.size):
            if relation_of(oa.centre, ob.centre) == clauses.relation:
                return
            best = (oa, ob)
    if best is None:
        score.fail("objects", f"expected {a.noun()} and {b.noun()}, found {', '.join(_describe(o) for o in objects)}")
    else:
        got = relation_of(best[0].centre, best[1].centre)
        score.fail("relation", f"expected {clauses.relation}, found {got}")


def motion_of(centres: np.ndarray) -> str:
    """The motion word of a (T, 2) centre trajectory by least-squares slope (px/frame)."""
    t = np.arange(len(centres), dtype=np.float64)
    t -= t.mean()
    denom = float((t * t).sum())
    sx, sy = ((t[:, None] * (centres - centres.mean(0))).sum(0) / denom).tolist()
    if max(abs(sx), abs(sy)) < MOTION_SLOPE:
        return "stays still"
    if abs(sx) >= abs(sy):
        return "moves right" if sx > 0 else "moves left"
    return "moves down" if sy > 0 else "moves up"


def _link(frames: list[list[SceneObject]], clauses) -> list[list[SceneObject]]:
    """Per caption object, its object in every frame (frames already hold the right number)."""
    nouns = clauses.objects
    tracks: list[list[SceneObject]] = [[] for _ in nouns]
    for objects in frames:
        best, best_cost = None, None
        for perm in itertools.permutations(objects, len(nouns)):
            cost = 0.0
            for j, (noun, obj) in enumerate(zip(nouns, perm)):
                cost += 4.0 * (obj.colour != noun.colour) + 4.0 * (obj.family != noun.shape.split()[0]) + 1.0 * (obj.shape != noun.shape)
                if tracks[j]:
                    (px, py), (x, y) = tracks[j][-1].centre, obj.centre
                    cost += 0.01 * (abs(px - x) + abs(py - y))
            if best_cost is None or cost < best_cost:
                best, best_cost = perm, cost
        for j, obj in enumerate(best):
            tracks[j].append(obj)
    return tracks


def _score_video(score: SampleScore, clauses, frames: list[list[SceneObject]]) -> None:
    n = len(clauses.objects)
    wrong = [t for t, objs in enumerate(frames) if len(objs) != n]
    if wrong:
        score.fail("count", f"expected {n} object(s) in every frame; frames {wrong[:5]} have {[len(frames[t]) for t in wrong[:5]]}")
        return
    for noun, track in zip(clauses.objects, _link(frames, clauses)):
        for attr in ("colour", "shape", "size"):
            want = getattr(noun, attr)
            if want is None:
                continue
            got = Counter(getattr(o, attr) for o in track).most_common(1)[0][0]
            if got != want:
                score.fail(attr, f"{noun.noun()}: expected {want}, found {got} in most frames")
        centres = np.array([o.centre for o in track], dtype=np.float64)
        motion = motion_of(centres)
        if motion != noun.motion:
            score.fail("motion", f"{noun.noun()}: expected {noun.motion}, found {motion}")


def score_frames(caption: str, frames: np.ndarray, classifier=None) -> SampleScore:
    """Score (T, H, W, 3) uint8 frames (any size; T = 1 for an image) against their caption."""
    clauses = parse_caption(caption)
    if clauses is None:
        score = SampleScore(str(caption), False, None, ())
        score.fail("grammar", "caption is outside the world's grammar")
        return score
    score = SampleScore(caption, True, clauses.kind, clauses.tags())
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    is_image = clauses.kind in IMAGE_KINDS
    if is_image and len(frames) != 1:
        score.fail("frames", f"an image caption needs one frame, got {len(frames)}")
        return score
    if not is_image and len(frames) < 2:
        score.fail("frames", f"a video caption needs two or more frames, got {len(frames)}")
        return score
    parsed = parse_frames(frames, classifier)
    if is_image:
        _score_image(score, clauses, parsed[0])
    else:
        _score_video(score, clauses, parsed)
    return score


def score_sample(sample: WorldSample, frames: np.ndarray, classifier=None) -> SampleScore:
    """Score frames against a world sample's own caption."""
    return score_frames(sample.caption, frames, classifier)
