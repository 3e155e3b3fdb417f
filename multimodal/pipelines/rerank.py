"""Generate, then check: rank a prompt's drafts by how well the model reads the prompt back from each.

The unified model both draws and captions. `num_candidates=K` on `TextToImagePipeline` / `TextToVideoPipeline`
denoises K drafts per output as one batch (the prompt's backbone pass is shared), decodes them, re-encodes each
draft's 8-bit pixels with the autoencoder and scores it by the model's own teacher-forced log-likelihood of
`prompt <eos>` through the captioning path (one backbone forward per draft, no sampling), then returns the best.
Reranking with a second model is an old lever (DALL-E with CLIP; verifier-guided noise search, arXiv 2501.09732);
here the verifier is the same model, so it costs no extra weights.

    pipe = TextToImagePipeline.from_pretrained("shapes")
    out = pipe("a large red circle", num_candidates=4, generator=torch.Generator().manual_seed(0))
    out.images[0]            # the best of 4
    out.scores               # tensor [1, 4]: each draft's log-likelihood of the prompt, best first
    out.candidate_index      # tensor [1, 4]: which draw (0..3) each score belongs to

Draft `c` of an output starts from the `c`-th noise its generator draws, whatever K is, so the first K' drafts of
a K-run are the drafts of a K'-run (up to batch-size rounding), and `num_candidates=1` is the plain pipeline: the
same pixels, nothing scored. `pipe.score(media, prompts)` exposes the scoring itself, e.g. to rank any images
against prompts (retrieval).

Length normalisation: `log_likelihood` is the sum over the prompt's tokens and the closing `<eos>`;
`mean_log_likelihood` divides it by that count (`num_tokens`). Drafts of one prompt share the count, so both rank
them alike; compare different prompts with the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # nothing here needs the torch module itself: the CLI checks --candidates without loading torch
    import torch

MAX_CANDIDATES = 32          # drafts per output: the denoising batch grows K-fold
# The CLI's K per kind, chosen on the validation split by accuracy per second of a whole command (docs/quality.md,
# "How the default K was chosen"): images gain 2.2x at K = 4; videos gain nothing measurable at any K.
DEFAULT_CANDIDATES = {"image": 4, "video": 1}


def check_num_candidates(value: object) -> int:
    """`num_candidates` must be an integer in [1, MAX_CANDIDATES]; anything else is a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"num_candidates must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"num_candidates must be >= 1, got {value}")
    if value > MAX_CANDIDATES:
        raise ValueError(f"num_candidates must be <= {MAX_CANDIDATES} (MAX_CANDIDATES), got {value}")
    return value


@dataclass
class ScoreResult:
    """The model's reading of each (media, prompt) pair.

    log_likelihood [N] float32: sum of log p(token) over the prompt's tokens and `<eos>`, given the media;
    mean_log_likelihood [N]: the same divided by num_tokens [N] (the length-normalised score)."""

    log_likelihood: torch.Tensor
    mean_log_likelihood: torch.Tensor
    num_tokens: torch.Tensor


def quantize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Decoded pixels in [-1, 1] -> the same rounded to the 256 levels a saved 8-bit image holds (still in [-1, 1]),
    so a draft is scored exactly as `score` scores the written file."""
    return ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round() / 127.5 - 1


def rank_drafts(scores: torch.Tensor) -> torch.Tensor:
    """scores [M, K] in draw order -> draw indices [M, K], best first (ties keep the earlier draw)."""
    return scores.sort(dim=1, descending=True, stable=True).indices
