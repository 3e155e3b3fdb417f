"""The caption grammar of the world, parsed back into clauses and slots.

``parse_caption`` is the inverse of ``CaptionClauses.caption()``: it recovers the kind, the objects
(count, size, colour, shape, motion) and the relation of any caption in the grammar of ``WORLD.md``,
and returns ``None`` for anything else (it never raises on text). Parsing is lenient where the grammar
is silent: case, surrounding whitespace, a final full stop and 'a' / 'an' do not matter, and size
words may be present or absent.

``caption_slots`` turns clauses into a multiset of slots, the unit of slot precision / recall / F1:

    object:<colour> <shape>          one per object (a count of n gives n)
    size:<colour> <shape>=<size>     when the caption states a size
    count:<colour> <shape>=<n>       count captions
    motion:<colour> <shape>=<motion> videos
    relation:<A> left of <B>         relations, canonical: 'right of' and 'below' are stored swapped,
                                     so 'A to the right of B' and 'B to the left of A' are one slot

``caption_errors`` says what a wrong caption gets wrong, by kind (``ERROR_KINDS``), so a quality report can show
which reading fails most (a digit read as another digit, a relation turned round, ...):

    caption_errors("a red square to the right of a magenta digit 2",
                   "a magenta digit 9 to the right of a red square")    # ('digit', 'relation')
"""

from __future__ import annotations

import re
from collections import Counter

from multimodal.data.world import (
    COLOURS,
    MOTIONS,
    NUMBER_WORDS,
    RELATIONS,
    SHAPES,
    SIZES,
    CaptionClauses,
    ObjectClause,
)

_COLOUR = "|".join(COLOURS)
_SIZE = "|".join(SIZES)
_SHAPE = "|".join(re.escape(s) for s in SHAPES)
_PLURAL = "|".join(re.escape(s) + "s" for s in SHAPES)
_MOTION = "|".join(MOTIONS)
_RELATION = "|".join(RELATIONS)
_NUMBER = {word: n for n, word in NUMBER_WORDS.items() if n > 1}

_OBJECT = rf"an? (?:(?P<size{{i}}>{_SIZE}) )?(?P<colour{{i}}>{_COLOUR}) (?P<shape{{i}}>{_SHAPE})"
_ONE = _OBJECT.format(i=0)
_TWO = _OBJECT.format(i=1)
_SINGLE = re.compile(rf"{_ONE}")
_COUNT = re.compile(rf"(?P<number>{'|'.join(_NUMBER)}) (?:(?P<size0>{_SIZE}) )?(?P<colour0>{_COLOUR}) (?P<shape0>{_PLURAL})")
_RELATION_RE = re.compile(rf"{_ONE} (?P<relation>{_RELATION}) {_TWO}")
_VIDEO = re.compile(rf"{_ONE} (?P<motion0>{_MOTION})(?: and {_TWO} (?P<motion1>{_MOTION}))?")


def normalize_caption(text: str) -> str:
    """Lower case, single spaces, no surrounding whitespace or final full stop."""
    text = " ".join(str(text).lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def parse_caption(text: str) -> CaptionClauses | None:
    """The clauses of a caption in the world's grammar, or ``None`` if it is outside the grammar."""
    if not isinstance(text, str):
        return None
    text = normalize_caption(text)
    m = _VIDEO.fullmatch(text)
    if m:
        objects = [_object(m, 0, motion=m["motion0"])]
        if m["motion1"]:
            objects.append(_object(m, 1, motion=m["motion1"]))
        return CaptionClauses("video", tuple(objects))
    m = _RELATION_RE.fullmatch(text)
    if m:
        return CaptionClauses("relation", (_object(m, 0), _object(m, 1)), m["relation"])
    m = _COUNT.fullmatch(text)
    if m:
        shape = m["shape0"][:-1]  # drop the plural s
        return CaptionClauses("count", (ObjectClause(m["colour0"], shape, m["size0"], count=_NUMBER[m["number"]]),))
    m = _SINGLE.fullmatch(text)
    if m:
        return CaptionClauses("single", (_object(m, 0),))
    return None


def _object(m: re.Match, i: int, motion: str | None = None) -> ObjectClause:
    return ObjectClause(m[f"colour{i}"], m[f"shape{i}"], m[f"size{i}"], motion=motion)


def caption_slots(clauses: CaptionClauses | None) -> Counter:
    """The slot multiset of parsed clauses (empty for ``None``); see the module docstring."""
    slots: Counter = Counter()
    if clauses is None:
        return slots
    for o in clauses.objects:
        key = f"{o.colour} {o.shape}"
        slots[f"object:{key}"] += o.count
        if o.size:
            slots[f"size:{key}={o.size}"] += 1
        if clauses.kind == "count":
            slots[f"count:{key}={o.count}"] += 1
        if o.motion:
            slots[f"motion:{key}={o.motion}"] += 1
    if clauses.relation is not None and len(clauses.objects) == 2:
        a, b = (f"{o.colour} {o.shape}" for o in clauses.objects)
        rel = clauses.relation
        if rel in ("to the right of", "below"):
            a, b = b, a
        axis = "left of" if rel in ("to the left of", "to the right of") else "above"
        slots[f"relation:{a} {axis} {b}"] += 1
    return slots


# What a wrong caption can get wrong (`caption_errors`), in report order:
ERROR_KINDS = (
    "grammar",    # the caption is outside the world's grammar
    "objects",    # another kind of caption or another number of objects (a count for a relation, one object for two)
    "colour",     # an object's colour
    "shape",      # an object's shape, other than a digit read as another digit
    "digit",      # a digit read as another digit
    "size",       # an object's size word (or one stated where the reference has none, or the reverse)
    "count",      # how many objects a count caption names
    "relation",   # the relation of two objects (its axis, or its direction)
    "motion",     # an object's motion
)
_INVERSE = {"to the right of": "to the left of", "below": "above"}


def _object_errors(cand: ObjectClause, ref: ObjectClause) -> list[str]:
    errors = []
    if cand.colour != ref.colour:
        errors.append("colour")
    if cand.shape != ref.shape:
        digits = cand.shape.startswith("digit") and ref.shape.startswith("digit")
        errors.append("digit" if digits else "shape")
    for name in ("size", "count", "motion"):
        if getattr(cand, name) != getattr(ref, name):
            errors.append(name)
    return errors


def _canonical_relation(clauses: CaptionClauses) -> tuple[tuple[ObjectClause, ...], str | None]:
    """'B to the right of A' -> ((A, B), 'to the left of'); 'B below A' -> ((A, B), 'above')."""
    if clauses.relation in _INVERSE:
        return clauses.objects[::-1], _INVERSE[clauses.relation]
    return clauses.objects, clauses.relation


def caption_errors(candidate: str, reference: str) -> tuple[str, ...]:
    """What `candidate` gets wrong against `reference`, as kinds of `ERROR_KINDS` in that order; () when they mean
    the same (exactly when `metrics.exact_match` holds).

    Objects are paired the way that leaves the fewest errors: a relation stated from the other object ('A above B'
    for 'B below A') is the same relation; objects paired across a relation's two sides mean its direction is wrong;
    a clip's objects may be listed in either order. A `reference` outside the grammar is a `ValueError`."""
    ref = parse_caption(reference)
    if ref is None:
        raise ValueError(f"reference caption {reference!r} is outside the world's grammar")
    cand = parse_caption(candidate)
    if cand is None:
        return ("grammar",)
    if cand.kind != ref.kind or len(cand.objects) != len(ref.objects):
        return ("objects",)
    (c_objs, c_rel), (r_objs, r_rel) = _canonical_relation(cand), _canonical_relation(ref)
    pairings = [(c_objs, [])]
    if len(r_objs) == 2:
        crossed = ["relation"] if ref.kind == "relation" else []     # a clip's objects have no order to respect
        pairings.append((c_objs[::-1], crossed))
    best: list[str] | None = None
    for objs, extra in pairings:
        errors = list(extra)
        if c_rel != r_rel and "relation" not in errors:
            errors.append("relation")
        for c, r in zip(objs, r_objs):
            errors += _object_errors(c, r)
        if best is None or len(errors) < len(best):
            best = errors
    return tuple(kind for kind in ERROR_KINDS if kind in best)


def caption_tags(text: str) -> tuple[str, ...]:
    """Report tags of a caption (see ``world.TAGS``); a caption outside the grammar has none."""
    clauses = parse_caption(text)
    return clauses.tags() if clauses is not None else ()
