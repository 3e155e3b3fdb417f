"""The quality table of a pipeline on the world's test and held-out splits: every number the README publishes.

    from multimodal.eval.quality import QualitySettings, quality_report, format_quality
    report = quality_report("shapes", QualitySettings(images=64, videos=32))
    print(format_quality(report))

For each split in `settings.splits` (default the in-distribution `test` split and the `held-out` split of
WORLD.md), the `i`-th sample is `sample_image(split_seed(split, i))` / `sample_video(split_seed(split, i))`:

| task            | input                          | measured                                                                |
|-----------------|--------------------------------|-------------------------------------------------------------------------|
| `text_to_image` | the sample's caption           | `accuracy`: the generated image passes every clause (`score_frames`); `count_ok`: it holds the right number of objects (the first clause the scorer checks) |
| `text_to_video` | the sample's caption           | `accuracy`: every object, colour, shape, size and motion clause holds; `count_ok`: every frame holds the right number of objects |
| `image_to_text` | the rendered image             | exact match, slot P / R / F1, BLEU-4, CIDEr-D of the greedy caption     |
| `video_to_text` | the rendered 17-frame clip     | the same for clips                                                      |

Generation uses the pipeline's flow scheduler with `steps` denoising steps, guidance `guidance`, and for sample `i`
a `torch.Generator` seeded with `seed + i`, so every figure is reproducible.

With `candidates` (e.g. `(1, 2, 4, 8)`), each prompt gets K = max(candidates) drafts in one run (pipelines/rerank.py:
draft c starts from the c-th noise of the prompt's generator, whatever K is). Every draft is judged by the world's
scorer and scored by the model, and for each listed K two rows are reported (`report["candidates"]`): `model`, the
draft among the first K that the model reads the prompt back from best (what `num_candidates=K` returns), and
`oracle`, the draft among them that the world's scorer likes best (passes; else right count; else fewest failed
clauses) — the ceiling any verifier could reach. The main rows are the model's choice at the smallest listed K;
every draft's verdicts and scores are kept in `report["drafts"]`. Each task's rows are per tag
(`world.TAGS`: single, relation, count, colour, motion, held-out) plus `overall`. The autoencoder's reconstruction
PSNR on the test split is reported next to them (`autoencoder`).

What the wrong captions get wrong (`captions.caption_errors`: a digit read as another digit, a relation turned
round, a wrong motion, ...) is kept with each wrong caption in `report["failures"]` and counted per split and task in
`report["caption_errors"]`: the share of all captions with each kind of error (a caption can have several).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.render import render_sample
from ..data.world import sample_image, sample_video, split_seed
from .captions import ERROR_KINDS, caption_errors
from .metrics import exact_match
from .report import caption_table, tag_rows
from .scorer import score_frames

TASKS = ("text_to_image", "text_to_video", "image_to_text", "video_to_text")
UNCOUNTED = {"count", "grammar", "frames", "file"}     # failed clauses that leave the object count wrong or unchecked


@dataclass
class QualitySettings:
    """How many samples of each split each task sees, and the sampling settings of the generations."""

    images: int = 200                 # text -> image prompts and image captions per split
    videos: int = 100                 # text -> video prompts and video captions per split
    splits: tuple[str, ...] = ("test", "held-out")
    tasks: tuple[str, ...] = TASKS
    steps: int = 28                   # denoising steps (the pipelines' default)
    guidance: float = 3.0             # classifier-free guidance (the pipelines' default)
    seed: int = 0                     # sample i's generator is seeded with seed + i
    batch_size: int = 16
    caption_tokens: int = 32          # the longest world caption is ~20 tokens
    autoencoder_images: int = 64      # 0 skips the PSNR rows
    autoencoder_videos: int = 16
    candidates: tuple[int, ...] = (1,)  # drafts per prompt compared (K); > 1 ranks them (pipelines/rerank.py)

    def __post_init__(self) -> None:
        from ..pipelines.rerank import check_num_candidates

        self.splits, self.tasks = tuple(self.splits), tuple(self.tasks)
        self.candidates = tuple(sorted({check_num_candidates(k) for k in self.candidates}))
        if not self.candidates:
            raise ValueError("candidates must name at least one K")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown quality tasks {unknown}; choose from {list(TASKS)}")
        for name in ("images", "videos", "autoencoder_images", "autoencoder_videos"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("steps", "batch_size", "caption_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class _Pipes:
    """The four task pipelines over one set of components (loaded once)."""

    image: Any
    video: Any
    image_caption: Any
    video_caption: Any
    components: dict = field(default_factory=dict)


def _pipes(source: Any, device: str | torch.device) -> _Pipes:
    from ..pipelines import ImageCaptionPipeline, TextToImagePipeline, TextToVideoPipeline, VideoCaptionPipeline

    base = source if hasattr(source, "components") else TextToImagePipeline.from_pretrained(source, device=device)
    parts = {k: base.components[k] for k in ("model", "tokenizer", "vae", "scheduler")}
    pipes = _Pipes(TextToImagePipeline(**parts), TextToVideoPipeline(**parts), ImageCaptionPipeline(**parts),
                   VideoCaptionPipeline(**parts), parts)
    for pipe in (pipes.image, pipes.video):
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _samples(kind: str, split: str, n: int) -> list:
    make = sample_image if kind == "image" else sample_video
    return [make(split_seed(split, i)) for i in range(n)]


def _batches(n: int, size: int):
    for lo in range(0, n, size):
        yield range(lo, min(n, lo + size))


def _preference(score) -> tuple:
    """How much the world's scorer likes a draft: passes, then right count, then fewer failed clauses."""
    return (score.passed, not UNCOUNTED & set(score.failed), -len(score.failed))


def _rows(scores: list) -> dict:
    return tag_rows([s.tags for s in scores], {"accuracy": [float(s.passed) for s in scores],
                                               "count_ok": [float(not UNCOUNTED & set(s.failed)) for s in scores]})


@torch.no_grad()
def generation_rows(pipe: Any, kind: str, captions: list[str], settings: QualitySettings) -> tuple[dict, list[dict]]:
    """Generate one image / video per caption (the best of K drafts with `settings.candidates`) and score it ->
    (per-tag accuracy rows, failures). With more than one K, the rows per K are in `generation_drafts`."""
    rows, failures, _ = generation_drafts(pipe, kind, captions, settings)
    return rows, failures


@torch.no_grad()
def generation_drafts(pipe: Any, kind: str, captions: list[str],
                      settings: QualitySettings) -> tuple[dict, list[dict], dict]:
    """-> (rows of the model's choice at the smallest K, its failures, {"per_k": {K: {"model", "oracle"}},
    "drafts": every draft's verdict and score in draw order}); see the module docstring."""
    k_max = max(settings.candidates)
    drafts: list[list] = []                          # per prompt: the world's score of each draft, draw order
    model_scores: list[list[float]] = []             # per prompt: the model's log-likelihood of each draft
    for idx in _batches(len(captions), settings.batch_size):
        gens = [torch.Generator(device=pipe.device).manual_seed(settings.seed + i) for i in idx]
        extra = dict(num_candidates=k_max, return_all_candidates=True) if k_max > 1 else {}
        out = pipe([captions[i] for i in idx], num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                   generator=gens, output_type="np", **extra)
        media = np.asarray(out.images if kind == "image" else out.frames)          # [B*K, (T,) H, W, 3] in [0, 1]
        media = np.clip(np.rint(media * 255.0), 0, 255).astype(np.uint8)
        media = media.reshape(len(idx), k_max, *media.shape[1:])
        for j, i in enumerate(idx):
            draw = out.candidate_index[j].tolist() if k_max > 1 else [0]            # draw of each returned draft
            order = np.argsort(draw)
            frames = media[j][order]                                                  # draw order
            drafts.append([score_frames(captions[i], f[None] if kind == "image" else f) for f in frames])
            model_scores.append(out.scores[j][order].tolist() if k_max > 1 else [0.0])
    per_k: dict[str, dict] = {}
    for k in settings.candidates:
        chosen = [d[int(np.argmax(m[:k]))] for d, m in zip(drafts, model_scores)]   # ties: the earlier draw
        oracle = [max(d[:k], key=_preference) for d in drafts]                        # max keeps the earliest
        per_k[str(k)] = {"model": _rows(chosen), "oracle": _rows(oracle)}
    chosen = [d[int(np.argmax(m[:settings.candidates[0]]))] for d, m in zip(drafts, model_scores)]
    failures = [{"index": i, **s.to_dict()} for i, s in enumerate(chosen) if not s.passed]
    extra = {"per_k": per_k, "drafts": {"passed": [[s.passed for s in d] for d in drafts],
                                        "count_ok": [[not UNCOUNTED & set(s.failed) for s in d] for d in drafts],
                                        "log_likelihood": model_scores}}
    return _rows(chosen), failures, extra


@torch.no_grad()
def captioning(pipe: Any, kind: str, samples: list, settings: QualitySettings) -> tuple[dict, list[dict]]:
    """Greedy captions of rendered images / clips against their captions -> (per-tag rows, wrong captions)."""
    candidates: list[str] = []
    for idx in _batches(len(samples), settings.batch_size):
        frames = [render_sample(samples[i]) for i in idx]                            # (T, 64, 64, 3) uint8
        inputs = [f[0] for f in frames] if kind == "image" else frames
        candidates += pipe(inputs, max_new_tokens=settings.caption_tokens).text
    references = [s.caption for s in samples]
    wrong = [{"index": i, "caption": c, "reference": r, "errors": list(caption_errors(c, r))}
             for i, (c, r) in enumerate(zip(candidates, references)) if not exact_match(c, r)]
    return caption_table(candidates, references), wrong


def error_rows(wrong: list[dict], samples: int) -> dict[str, float]:
    """The share of `samples` captions with each kind of error (`ERROR_KINDS`), from `captioning`'s wrong captions;
    `any` is the share of wrong captions (1 - exact match)."""
    return {"samples": samples, "any": len(wrong) / samples,
            **{kind: sum(kind in w["errors"] for w in wrong) / samples for kind in ERROR_KINDS}}


def quality_report(source: Any = "shapes", settings: QualitySettings | None = None,
                   device: str | torch.device = "cpu", log=None) -> dict:
    """Score a pipeline (a built-in name, a saved folder, or a loaded pipeline) on the world -> JSON-ready dict."""
    from ..training.autoencoder import evaluate_psnr

    settings = settings or QualitySettings()
    pipes = _pipes(source, device)
    report: dict[str, Any] = {"settings": asdict(settings), "splits": {}, "failures": {}, "seconds": {}}
    jobs = {"text_to_image": (pipes.image, "image", "generate"), "text_to_video": (pipes.video, "video", "generate"),
            "image_to_text": (pipes.image_caption, "image", "caption"),
            "video_to_text": (pipes.video_caption, "video", "caption")}
    for split in settings.splits:
        report["splits"][split], report["failures"][split] = {}, {}
        for task in settings.tasks:
            pipe, kind, mode = jobs[task]
            n = settings.images if kind == "image" else settings.videos
            if n == 0:
                continue
            start = time.perf_counter()
            samples = _samples(kind, split, n)
            if mode == "generate":
                rows, failures, extra = generation_drafts(pipe, kind, [s.caption for s in samples], settings)
                if settings.candidates != (1,):
                    report.setdefault("candidates", {}).setdefault(split, {})[task] = extra["per_k"]
                    report.setdefault("drafts", {}).setdefault(split, {})[task] = extra["drafts"]
            else:
                rows, failures = captioning(pipe, kind, samples, settings)
                report.setdefault("caption_errors", {}).setdefault(split, {})[task] = error_rows(failures, n)
            report["splits"][split][task] = rows
            report["failures"][split][task] = failures
            report["seconds"][f"{split}/{task}"] = time.perf_counter() - start
            if log is not None:
                log(f"{split} {task}: {n} samples in {time.perf_counter() - start:.1f} s")
    vae = pipes.components.get("vae")
    if vae is not None and (settings.autoencoder_images or settings.autoencoder_videos):
        report["autoencoder"] = evaluate_psnr(vae, num_images=settings.autoencoder_images,
                                              num_videos=settings.autoencoder_videos, split="test")
    return report


def headline(report: dict) -> dict[str, float]:
    """The figures the built-in model's targets name (overall rows; missing tasks are left out)."""
    out: dict[str, float] = {}
    for split, name in (("test", "in-distribution"), ("held-out", "held-out")):
        tasks = report["splits"].get(split, {})
        for task, metric in (("text_to_image", "accuracy"), ("text_to_video", "accuracy"),
                             ("image_to_text", "exact"), ("video_to_text", "exact"), ("video_to_text", "slot_f1")):
            if task in tasks:
                out[f"{name} {task} {metric}"] = tasks[task]["overall"][metric]
    for key in ("image_psnr", "video_psnr"):
        if key in report.get("autoencoder", {}):
            out[f"autoencoder {key}"] = report["autoencoder"][key]
    return out


def format_quality(report: dict) -> str:
    """Markdown tables: one per split and task, rows per tag (percentages; CIDEr-D as a number)."""
    lines: list[str] = []
    for split, tasks in report["splits"].items():
        for task, rows in tasks.items():
            columns = [c for c in next(iter(rows.values())) if c != "samples"]
            lines += [f"**{split} · {task}**", "",
                      "| tag | samples | " + " | ".join(columns) + " |",
                      "|---|---|" + "---|" * len(columns)]
            for tag, row in rows.items():
                cells = [f"{row[c]:.2f}" if c == "cider_d" else f"{100 * row[c]:.1f}%" for c in columns]
                lines.append(f"| {tag} | {row['samples']} | " + " | ".join(cells) + " |")
            lines.append("")
    if report.get("caption_errors"):
        lines += ["**What the wrong captions get wrong** (share of all captions with each kind of error)", "",
                  "| split · task | samples | any | " + " | ".join(ERROR_KINDS) + " |",
                  "|---|---|---|" + "---|" * len(ERROR_KINDS)]
        for split, tasks in report["caption_errors"].items():
            for task, row in tasks.items():
                cells = [f"{100 * row[k]:.1f}%" for k in ("any", *ERROR_KINDS)]
                lines.append(f"| {split} · {task} | {row['samples']} | " + " | ".join(cells) + " |")
        lines.append("")
    for split, tasks in report.get("candidates", {}).items():
        for task, per_k in tasks.items():
            lines += [f"**{split} · {task} · best of K drafts** (accuracy: the model's choice / the oracle's)", "",
                      "| K | " + " | ".join(next(iter(per_k.values()))["model"]) + " | count_ok, overall |",
                      "|---|" + "---|" * (len(next(iter(per_k.values()))["model"]) + 1)]
            for k, pair in per_k.items():
                cells = [f"{100 * pair['model'][t]['accuracy']:.1f}% / {100 * pair['oracle'][t]['accuracy']:.1f}%"
                         for t in pair["model"]]
                lines.append(f"| {k} | " + " | ".join(cells) + f" | {100 * pair['model']['overall']['count_ok']:.1f}%"
                             f" / {100 * pair['oracle']['overall']['count_ok']:.1f}% |")
            lines.append("")
    if "autoencoder" in report:
        ae = report["autoencoder"]
        lines.append(f"autoencoder PSNR on the test split: images {ae.get('image_psnr', float('nan')):.1f} dB, "
                     f"videos {ae.get('video_psnr', float('nan')):.1f} dB")
    return "\n".join(lines)
