"""The shapes-and-digits world: scene sampling, structured metadata and canonical captions.

Every sample is a pure function of an integer seed (``sample_image(seed)``, ``sample_video(seed)``);
the seed also decides the split, because train / validation / test / held-out are disjoint seed
ranges (``SPLITS``). The contract is ``WORLD.md``; this module is one implementation of it.

A caption is the rendering of a :class:`CaptionClauses` — what the scorer checks in the pixels and
what ``multimodal.eval.captions.parse_caption`` recovers from text — so metadata, caption and
score never drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from multimodal.data.glyphs import glyph_indices

FRAME_SIZE = 64
NUM_FRAMES = 17
FPS = 8
MARGIN = 2  # px between any object and the frame border
# px between the bounding boxes of two objects: one more than WORLD.md's minimum of 2, so that H.264's
# 2x2 chroma blocks (which bleed one pixel past an edge) can never bridge two objects in an mp4
GAP = 3
STEP = 2  # px per frame of a moving object
RELATION_TIE = 4  # relations with ||dx| - |dy|| <= this are resampled

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "orange": (255, 128, 0),
}
GEOMETRIC_SHAPES = ("square", "circle", "triangle")
DIGIT_SHAPES = tuple(f"digit {d}" for d in range(10))
SHAPES = GEOMETRIC_SHAPES + DIGIT_SHAPES
SIZES: dict[str, int] = {"small": 12, "large": 20}
SIZE_THRESHOLD = 16  # small < 16 px <= large
MOTIONS: dict[str, tuple[int, int]] = {
    "moves left": (-STEP, 0),
    "moves right": (STEP, 0),
    "moves up": (0, -STEP),
    "moves down": (0, STEP),
    "stays still": (0, 0),
}
RELATIONS = ("to the left of", "to the right of", "above", "below")
NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}
IMAGE_KINDS = ("single", "relation", "count")
KINDS = IMAGE_KINDS + ("video",)
TAGS = ("single", "relation", "count", "colour", "motion", "held-out")

HELD_OUT_COLOUR_SHAPE = frozenset(
    {("yellow", "triangle"), ("cyan", "circle"), ("orange", "square"), ("magenta", "digit 3")}
)
HELD_OUT_SHAPE_MOTION = frozenset({("circle", "moves up"), ("triangle", "moves left")})

_RANGE = 10_000_000
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 1_000_000_000),
    "validation": (1_000_000_000, 1_000_000_000 + _RANGE),
    "test": (1_010_000_000, 1_010_000_000 + _RANGE),
    "held-out": (1_020_000_000, 1_020_000_000 + _RANGE),
}


def split_of(seed: int) -> str:
    """The split a seed belongs to; raises ``ValueError`` for a seed outside every range."""
    for name, (lo, hi) in SPLITS.items():
        if lo <= seed < hi:
            return name
    raise ValueError(f"seed {seed} is outside every split range {SPLITS}")


def split_seed(split: str, index: int) -> int:
    """The ``index``-th seed of ``split`` (``index`` counts from 0)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    lo, hi = SPLITS[split]
    if not 0 <= index < hi - lo:
        raise ValueError(f"index {index} is outside split {split!r} (0..{hi - lo - 1})")
    return lo + index


def shape_family(shape: str) -> str:
    """'square', 'circle', 'triangle' or 'digit'."""
    return "digit" if shape.startswith("digit") else shape


# ----------------------------------------------------------------------------------------------
# Clauses and captions


@dataclass(frozen=True)
class ObjectClause:
    """What a caption says about one object (or one group of identical objects, for counts)."""

    colour: str
    shape: str
    size: str | None = None  # omitted in two-object captions
    count: int = 1
    motion: str | None = None  # videos only

    def noun(self) -> str:
        """'red circle', 'large red circle', 'two small red circles'."""
        shape = self.shape + "s" if self.count > 1 else self.shape
        words = [self.size] if self.size else []
        return " ".join(words + [self.colour, shape])


@dataclass(frozen=True)
class CaptionClauses:
    """The structured content of a caption: its kind, its objects and (images) a relation.

    For a relation the caption reads ``objects[0] relation objects[1]``; for a two-object video the
    objects are listed left to right by their first-frame centre.
    """

    kind: str
    objects: tuple[ObjectClause, ...]
    relation: str | None = None

    def tags(self) -> tuple[str, ...]:
        """Report tags: the kind tag, 'colour' and 'held-out' where they apply (see ``TAGS``)."""
        tags = ["motion" if self.kind == "video" else self.kind]
        if len(self.objects) == 2 and self.objects[0].shape == self.objects[1].shape:
            tags.append("colour")  # the two objects differ only in colour: a binding test
        if self.is_held_out():
            tags.append("held-out")
        return tuple(tags)

    def is_held_out(self) -> bool:
        """True if any object uses a held-out colour–shape or shape–motion pair."""
        for o in self.objects:
            if (o.colour, o.shape) in HELD_OUT_COLOUR_SHAPE:
                return True
            if o.motion is not None and (o.shape, o.motion) in HELD_OUT_SHAPE_MOTION:
                return True
        return False

    def caption(self) -> str:
        """The canonical caption (the grammar of ``WORLD.md``)."""
        if self.kind == "relation":
            a, b = self.objects
            return f"{_article(a.noun())} {self.relation} {_article(b.noun())}"
        if self.kind == "count":
            (o,) = self.objects
            return f"{NUMBER_WORDS[o.count]} {o.noun()}"
        parts = [_article(o.noun()) + (f" {o.motion}" if o.motion else "") for o in self.objects]
        return " and ".join(parts)


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


# ----------------------------------------------------------------------------------------------
# Samples


@dataclass(frozen=True)
class WorldObject:
    """One object of a sample: appearance, first-frame box (top-left ``x``, ``y``) and motion."""

    colour: str
    shape: str
    size: str
    x: int
    y: int
    motion: str = "stays still"
    glyph: int | None = None  # sklearn index, digits only

    @property
    def pixels(self) -> int:
        return SIZES[self.size]

    def box(self, t: int = 0) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the box at frame ``t``, x1/y1 exclusive."""
        dx, dy = MOTIONS[self.motion]
        x0, y0 = self.x + dx * t, self.y + dy * t
        return x0, y0, x0 + self.pixels, y0 + self.pixels

    def centre(self, t: int = 0) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box(t)
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


@dataclass(frozen=True)
class WorldSample:
    """A sample of the world: everything needed to render it and to check its caption."""

    seed: int
    split: str
    kind: str
    objects: tuple[WorldObject, ...]
    clauses: CaptionClauses
    num_frames: int = 1
    tags: tuple[str, ...] = field(default=())

    @property
    def caption(self) -> str:
        return self.clauses.caption()

    def centres(self) -> list[list[tuple[float, float]]]:
        """Per frame, the centre of every object: ``centres()[t][i]``."""
        return [[o.centre(t) for o in self.objects] for t in range(self.num_frames)]

    def to_dict(self) -> dict:
        """JSON-ready metadata (objects, per-frame positions, caption, tags)."""
        return {
            "seed": self.seed,
            "split": self.split,
            "kind": self.kind,
            "caption": self.caption,
            "tags": list(self.tags),
            "num_frames": self.num_frames,
            "objects": [asdict(o) for o in self.objects],
            "positions": [[list(c) for c in frame] for frame in self.centres()],
        }


# ----------------------------------------------------------------------------------------------
# Sampling


class _Sampler:
    """Draws objects under the constraints of one split, from one seeded generator."""

    def __init__(self, seed: int, modality: int) -> None:
        self.split = split_of(seed)
        self.rng = np.random.default_rng([seed, modality])
        self.test_glyphs = self.split != "train"
        self.allow_held_out = self.split == "held-out"

    def choice(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def shape(self) -> str:
        family = self.choice(GEOMETRIC_SHAPES + ("digit",))
        return f"digit {int(self.rng.integers(10))}" if family == "digit" else family

    def appearance(self, video: bool) -> tuple[str, str, str]:
        """(colour, shape, motion) outside the held-out pairs unless this split allows them."""
        while True:
            colour, shape = self.choice(tuple(COLOURS)), self.shape()
            motion = self.choice(tuple(MOTIONS)) if video else "stays still"
            if self.allow_held_out:
                return colour, shape, motion
            if (colour, shape) in HELD_OUT_COLOUR_SHAPE:
                continue
            if video and (shape, motion) in HELD_OUT_SHAPE_MOTION:
                continue
            return colour, shape, motion

    def held_out_appearance(self, video: bool) -> tuple[str, str, str]:
        """(colour, shape, motion) that contains one held-out pair, chosen uniformly among them."""
        pairs = sorted(HELD_OUT_COLOUR_SHAPE) + (sorted(HELD_OUT_SHAPE_MOTION) if video else [])
        a, b = self.choice(pairs)
        if b in MOTIONS:  # (shape, motion)
            return self.choice(tuple(COLOURS)), a, b
        motion = self.choice(tuple(MOTIONS)) if video else "stays still"
        return a, b, motion

    def glyph(self, shape: str) -> int | None:
        if not shape.startswith("digit"):
            return None
        return int(self.choice(glyph_indices(int(shape.split()[1]), self.test_glyphs)))

    def place(self, colour: str, shape: str, size: str, motion: str, frames: int) -> WorldObject:
        """A random first-frame position keeping the object inside the margin in every frame."""
        px = SIZES[size]
        dx, dy = MOTIONS[motion]
        span_x, span_y = dx * (frames - 1), dy * (frames - 1)
        lo_x, hi_x = MARGIN - min(0, span_x), FRAME_SIZE - MARGIN - px - max(0, span_x)
        lo_y, hi_y = MARGIN - min(0, span_y), FRAME_SIZE - MARGIN - px - max(0, span_y)
        x = int(self.rng.integers(lo_x, hi_x + 1))
        y = int(self.rng.integers(lo_y, hi_y + 1))
        return WorldObject(colour, shape, size, x, y, motion, self.glyph(shape))


def _apart(a: WorldObject, b: WorldObject, frames: int) -> bool:
    """True if the boxes of ``a`` and ``b`` are at least ``GAP`` px apart in every frame."""
    t = np.arange(frames)
    (adx, ady), (bdx, bdy) = MOTIONS[a.motion], MOTIONS[b.motion]
    ox, oy = (b.x - a.x) + (bdx - adx) * t, (b.y - a.y) + (bdy - ady) * t  # offset of b's corner
    gap = np.maximum.reduce([ox - a.pixels, -ox - b.pixels, oy - a.pixels, -oy - b.pixels])
    return bool(gap.min() >= GAP)


def _layout(s: _Sampler, specs: list[tuple[str, str, str, str]], frames: int, check=None) -> list[WorldObject]:
    """Place objects one by one, restarting until all pairwise gaps (and ``check``) hold."""
    while True:
        placed: list[WorldObject] = []
        for spec in specs:
            for _ in range(50):
                o = s.place(*spec, frames)
                if all(_apart(o, p, frames) for p in placed):
                    placed.append(o)
                    break
            else:
                break
        if len(placed) == len(specs) and (check is None or check(placed)):
            return placed


def relation_of(a: tuple[float, float], b: tuple[float, float]) -> str | None:
    """The relation of centre ``a`` to centre ``b``: the axis with the larger offset wins; None on a tie."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) == abs(dy):
        return None
    if abs(dx) > abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _distinct(a: tuple[str, str, str], b: tuple[str, str, str]) -> bool:
    return (a[0], a[1]) != (b[0], b[1])


def sample_image(seed: int) -> WorldSample:
    """The image (one frame) of ``seed``: a single object, a relation or a count, uniformly."""
    s = _Sampler(seed, modality=0)
    kind = s.choice(IMAGE_KINDS)
    held = s.held_out_appearance(False) if s.allow_held_out else None
    first = held or s.appearance(False)
    if kind == "single":
        size = s.choice(tuple(SIZES))
        objects = _layout(s, [(first[0], first[1], size, "stays still")], 1)
        clauses = CaptionClauses(kind, (ObjectClause(first[0], first[1], size),))
    elif kind == "count":
        size, n = s.choice(tuple(SIZES)), int(s.rng.integers(2, 4))
        objects = _layout(s, [(first[0], first[1], size, "stays still")] * n, 1)
        clauses = CaptionClauses(kind, (ObjectClause(first[0], first[1], size, count=n),))
    else:  # relation between two objects that differ in colour or shape
        second = s.appearance(False)
        while not _distinct(first, second):
            second = s.appearance(False)
        if s.rng.random() < 0.5 and held is not None:
            first, second = second, first
        sizes = [s.choice(tuple(SIZES)) for _ in range(2)]
        specs = [(first[0], first[1], sizes[0], "stays still"), (second[0], second[1], sizes[1], "stays still")]

        def clear(objs: list[WorldObject]) -> bool:
            (ax, ay), (bx, by) = objs[0].centre(), objs[1].centre()
            return abs(abs(ax - bx) - abs(ay - by)) > RELATION_TIE

        objects = _layout(s, specs, 1, clear)
        rel = relation_of(objects[0].centre(), objects[1].centre())
        clauses = CaptionClauses(kind, tuple(ObjectClause(o.colour, o.shape) for o in objects), rel)
    return WorldSample(seed, s.split, kind, tuple(objects), clauses, 1, clauses.tags())


def sample_video(seed: int) -> WorldSample:
    """The 17-frame video of ``seed``: one or two objects, each with one motion."""
    s = _Sampler(seed, modality=1)
    n = int(s.rng.integers(1, 3))
    first = s.held_out_appearance(True) if s.allow_held_out else s.appearance(True)
    looks = [first]
    while len(looks) < n:
        other = s.appearance(True)
        if _distinct(first, other):
            looks.append(other)
    if n == 2 and s.rng.random() < 0.5:
        looks.reverse()
    sizes = [s.choice(tuple(SIZES)) for _ in looks]
    specs = [(c, sh, sz, m) for (c, sh, m), sz in zip(looks, sizes)]

    def ordered(objs: list[WorldObject]) -> bool:  # a clear left-to-right order at frame 0
        return len(objs) < 2 or abs(objs[0].centre()[0] - objs[1].centre()[0]) >= 4

    objects = sorted(_layout(s, specs, NUM_FRAMES, ordered), key=lambda o: o.centre()[0])
    if n == 1:
        o = objects[0]
        clauses = CaptionClauses("video", (ObjectClause(o.colour, o.shape, o.size, motion=o.motion),))
    else:
        clauses = CaptionClauses("video", tuple(ObjectClause(o.colour, o.shape, motion=o.motion) for o in objects))
    return WorldSample(seed, s.split, "video", tuple(objects), clauses, NUM_FRAMES, clauses.tags())
