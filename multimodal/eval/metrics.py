"""Caption metrics in plain Python: exact match, slot precision / recall / F1, BLEU-4 and CIDEr-D.

No Java, no downloads. Text is tokenised by one fixed rule (lower case, runs of letters and digits),
standing in for the PTB tokenizer of ``pycocoevalcap``; on this world's captions they agree.

- **Exact match**: the candidate parses to the same slot multiset as the reference (so
  'A left of B' equals 'B right of A'); ``exact_text`` is plain string equality after normalising.
- **Slots**: per caption, precision = |cand ∩ ref| / |cand|, recall = |cand ∩ ref| / |ref| over
  slot multisets (``captions.caption_slots``); F1 their harmonic mean; a caption outside the grammar
  has no slots and scores 0. Reported as means over captions.
- **BLEU-4** (Papineni et al. 2002), corpus level: clipped n-gram precisions for n = 1..4 summed over
  the corpus, their geometric mean, times the brevity penalty exp(1 − r/c) when the candidates are
  shorter (r: for each candidate the closest reference length). No smoothing: any zero precision
  gives 0.
- **CIDEr-D** (Vedantam et al. 2015): for n = 1..4, TF-IDF vectors of n-gram counts with
  idf = log(N) − log(max(1, df)), df counted over the *references of the scored set* (N items);
  the similarity clips the candidate's weights at the reference's, divides by both norms, and is
  damped by a Gaussian length penalty exp(−Δ²/2σ²), σ = 6; averaged over n and references, × 10.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass

from multimodal.eval.captions import caption_slots, normalize_caption, parse_caption

_TOKEN = re.compile(r"[a-z0-9]+")
SIGMA = 6.0


def tokenize(text: str) -> list[str]:
    """Lower-case runs of letters and digits."""
    return _TOKEN.findall(str(text).lower())


def ngrams(tokens: list[str], n: int) -> Counter:
    """Counts of the n-grams of a token list."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def slot_scores(candidate: str, reference: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of the candidate's slots against the reference's."""
    cand, ref = caption_slots(parse_caption(candidate)), caption_slots(parse_caption(reference))
    hit = sum((cand & ref).values())
    p = hit / sum(cand.values()) if cand else 0.0
    r = hit / sum(ref.values()) if ref else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def exact_match(candidate: str, reference: str) -> bool:
    """True when both captions parse to the same, non-empty slot multiset."""
    cand = caption_slots(parse_caption(candidate))
    return bool(cand) and cand == caption_slots(parse_caption(reference))


def bleu(candidates: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` of candidates, each against its list of references."""
    _check(candidates, references)
    hits, totals = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        c = tokenize(cand)
        rs = [tokenize(r) for r in refs]
        cand_len += len(c)
        ref_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]  # closest, ties to the shorter
        for n in range(1, max_n + 1):
            counts = ngrams(c, n)
            best: Counter = Counter()
            for r in rs:
                best |= ngrams(r, n)  # max count of each n-gram over the references
            hits[n - 1] += sum(min(k, best[g]) for g, k in counts.items())
            totals[n - 1] += sum(counts.values())
    if cand_len == 0 or min(hits) == 0:
        return 0.0
    log_precision = sum(math.log(h / t) for h, t in zip(hits, totals)) / max_n
    brevity = 1.0 if cand_len > ref_len else math.exp(1.0 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


def cider_d(candidates: list[str], references: list[list[str]], max_n: int = 4, sigma: float = SIGMA) -> float:
    """Corpus CIDEr-D (the mean of per-item scores); IDF from the given references."""
    _check(candidates, references)
    n_items = len(candidates)
    df: Counter = Counter()
    for refs in references:
        seen = set()
        for r in refs:
            toks = tokenize(r)
            for n in range(1, max_n + 1):
                seen |= set(ngrams(toks, n))
        df.update(seen)
    log_n = math.log(float(n_items))

    def vectors(tokens: list[str]) -> list[dict]:
        return [{g: k * (log_n - math.log(max(1.0, df[g]))) for g, k in ngrams(tokens, n).items()} for n in range(1, max_n + 1)]

    def norm(v: dict) -> float:
        return math.sqrt(sum(x * x for x in v.values()))

    total = 0.0
    for cand, refs in zip(candidates, references):
        c_tok = tokenize(cand)
        c_vec = vectors(c_tok)
        item = 0.0
        for r in refs:
            r_tok = tokenize(r)
            r_vec = vectors(r_tok)
            penalty = math.exp(-((len(c_tok) - len(r_tok)) ** 2) / (2 * sigma**2))
            sims = []
            for cv, rv in zip(c_vec, r_vec):
                nc, nr = norm(cv), norm(rv)
                if nc == 0 or nr == 0:
                    sims.append(0.0)
                    continue
                dot = sum(min(w, rv[g]) * rv[g] for g, w in cv.items() if g in rv)
                sims.append(dot / (nc * nr) * penalty)
            item += sum(sims) / max_n
        total += 10.0 * item / len(refs)
    return total / n_items


def _check(candidates: list[str], references: list[list[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if not candidates:
        raise ValueError("no captions to score")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"item {i} has no reference caption")


@dataclass
class CaptionScores:
    """Caption metrics of a set of candidates against their references (means over captions)."""

    count: int
    exact: float
    exact_text: float
    slot_precision: float
    slot_recall: float
    slot_f1: float
    parsed: float
    bleu4: float
    cider_d: float

    def to_dict(self) -> dict:
        return asdict(self)


def score_captions(candidates: list[str], references: list[str]) -> CaptionScores:
    """All caption metrics of candidates against one reference each."""
    refs = [[r] for r in references]
    _check(candidates, refs)
    prf = [slot_scores(c, r) for c, r in zip(candidates, references)]
    n = len(candidates)
    return CaptionScores(
        count=n,
        exact=sum(exact_match(c, r) for c, r in zip(candidates, references)) / n,
        exact_text=sum(normalize_caption(c) == normalize_caption(r) for c, r in zip(candidates, references)) / n,
        slot_precision=sum(p for p, _, _ in prf) / n,
        slot_recall=sum(r for _, r, _ in prf) / n,
        slot_f1=sum(f for _, _, f in prf) / n,
        parsed=sum(parse_caption(c) is not None for c in candidates) / n,
        bleu4=bleu(candidates, refs),
        cider_d=cider_d(candidates, refs),
    )
