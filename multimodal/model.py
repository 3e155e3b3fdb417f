"""The unified model: one sequence of text, image and video segments through the sparse backbone, three heads.

Sequence layout (token roles from `multimodal.tokenizers.text.SpecialTokens`)::

    captioning:      <bos> <begin_video> [video tokens] <end_video> [prompt text]  -> decode caption text
    text generation: <bos> prompt text                                             -> decode text
    generation:      <bos> prompt text <begin_image> <image_gen> x Nq             -> states at the Nq queries
                                                                                     condition the image head

- Text tokens are the backbone's embeddings plus the TEXT modality embedding.
- Visual tokens: normalised autoencoder latents [C, T', h, w] are cut into `patch_size` x `patch_size` patches,
  projected to the backbone width (plus, with `visual_stem`, the projected patches of a small convolution over the
  latent grid, `visual_stem.py`), and given the IMAGE or VIDEO modality embedding plus a learned projection of
  sinusoidal (time, row, column) features, so every visual token knows its frame, row and column; the backbone's
  rotary positions keep counting the sequence (as Emu3 and Show-o do, reference/multimodal.md §2). Their routing id
  for hash-routed MoE layers is the segment's begin marker.
- Query tokens: learned vectors (one per slot) plus the `<image_gen>` / `<video_gen>` embedding and the QUERY
  modality embedding. The backbone runs once over prompt + queries (causal mask), and its final hidden states there
  [B, Nq, dim] condition the flow head through cross-attention; only the head runs per denoising step.

Batches of different lengths are padded: on the right for one-shot forwards (conditioning, training), so every row's
tokens keep the storage positions they would have alone; on the left for decoding with the backbone's caches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from .backbone.cache import BackboneCache
from .backbone.generate import positions_from_mask
from .backbone.transformer import Transformer, TransformerOutput
from .config import BackboneConfig, preset
from .config_keys import reject_unknown_keys
from .decoders.flow import FlowHeadConfig, flow_matching_loss, grid_position_features
from .decoders.image import ImageHead
from .decoders.text import GENERATION_CONFIG_FILE, GenerationConfig, TextGenerationResult, generate_text
from .tokenizers.patchify import patchify
from .decoders.video import VideoHead
from .visual_stem import VisualStem
from .empty_init import empty_init
from .io.atomic import atomic_path

TEXT, IMAGE, VIDEO, QUERY = 0, 1, 2, 3
VISUAL_KINDS = ("image", "video")


@dataclass
class TokenIds:
    """Ids of the special tokens the sequence layout uses (equal to the text tokenizer's)."""

    bos: int = 0
    eos: int = 1
    pad: int = 2
    begin_image: int = 3
    end_image: int = 4
    begin_video: int = 5
    end_video: int = 6
    image_gen: int = 7
    video_gen: int = 8

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "TokenIds":
        """From a `TextTokenizer` (its `ids` dict maps roles to ids)."""
        return cls(**{f.name: int(tokenizer.ids[f.name]) for f in dataclasses.fields(cls)})


@dataclass
class ModelConfig:
    """Backbone + visual embedding + query tokens + the image and video flow heads; JSON keys equal field names."""

    backbone: BackboneConfig = field(default_factory=lambda: preset("debug"))
    image_head: FlowHeadConfig = field(default_factory=FlowHeadConfig)
    video_head: FlowHeadConfig = field(default_factory=lambda: FlowHeadConfig(max_latent_frames=5))
    token_ids: TokenIds = field(default_factory=TokenIds)
    latent_channels: int = 16            # the autoencoder's
    temporal_compression: int = 4        # the autoencoder's: 1 + 4k frames -> 1 + k latent frames
    spatial_compression: int = 8         # the autoencoder's
    patch_size: int = 2                  # latent positions per backbone token along rows and columns
    num_image_queries: int = 16
    num_video_queries: int = 32
    position_frequencies: int = 16       # sinusoidal frequencies per (time, row, column) axis of visual tokens
    visual_stem: int = 0                 # channels of the convolutional stem over the latents (visual_stem.py); 0: none
    height: int = 64                     # default output size
    width: int = 64
    num_frames: int = 17
    fps: float = 8.0
    condition_dropout: float = 0.1       # training: probability of an empty prompt (for classifier-free guidance)

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig.from_dict(self.backbone)
        for name in ("image_head", "video_head"):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, FlowHeadConfig.from_dict(getattr(self, name)))
        if isinstance(self.token_ids, dict):
            self.token_ids = TokenIds(**self.token_ids)
        for name in ("latent_channels", "temporal_compression", "spatial_compression", "patch_size",
                     "num_image_queries", "num_video_queries", "position_frequencies", "num_frames"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.visual_stem < 0:
            raise ValueError(f"ModelConfig.visual_stem must be >= 0 (0: no stem), got {self.visual_stem}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")
        vocab = self.backbone.vocab_size
        bad = {k: v for k, v in dataclasses.asdict(self.token_ids).items() if not 0 <= v < vocab}
        if bad:
            raise ValueError(f"token ids {bad} are outside the backbone vocabulary [0, {vocab})")
        for name in ("image_head", "video_head"):
            head = getattr(self, name)
            if head.latent_channels != self.latent_channels:
                raise ValueError(f"{name}.latent_channels ({head.latent_channels}) != latent_channels "
                                 f"({self.latent_channels})")
            head.cond_dim = self.backbone.hidden_size
        if self.image_head.max_latent_frames != 1:
            raise ValueError(f"image_head.max_latent_frames must be 1, got {self.image_head.max_latent_frames}")
        if self.video_head.spatial_condition:
            raise ValueError("video_head.spatial_condition: only the image head reads its condition as a grid")
        if self.image_head.spatial_condition and math.isqrt(self.num_image_queries) ** 2 != self.num_image_queries:
            raise ValueError(f"image_head.spatial_condition reads the image queries as a square grid; "
                             f"num_image_queries={self.num_image_queries} is not a square")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        reject_unknown_keys(cls, data)
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelConfig":
        return ModelConfig.from_dict({**self.to_dict(), **changes})


def model_preset(name: str, token_ids: TokenIds | None = None, vocab_size: int | None = None) -> ModelConfig:
    """`debug` (seconds on a CPU, for tests) or `tiny` (the demo size): backbone preset plus matching heads."""
    sizes = {"debug": dict(width=32, depth=1, num_heads=2, frequency_dim=32, position_frequencies=8),
             "tiny": dict(width=128, depth=3, num_heads=4, frequency_dim=128, position_frequencies=16)}
    if name not in sizes:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(sizes)}")
    backbone = preset(name)
    if vocab_size is not None:
        backbone = backbone.replace(vocab_size=vocab_size)
    small = name == "debug"
    return ModelConfig(
        backbone=backbone, image_head=FlowHeadConfig(**sizes[name], max_latent_frames=1),
        video_head=FlowHeadConfig(**sizes[name], max_latent_frames=5), token_ids=token_ids or TokenIds(),
        num_image_queries=4 if small else 16, num_video_queries=8 if small else 32,
        position_frequencies=8 if small else 16)


@dataclass
class Segment:
    """One piece of a sample: `text` (ids), `image` / `video` (latents [C, T', h, w]), or `image_query` /
    `video_query` (a begin marker and the learned query slots)."""

    kind: str
    ids: list[int] | None = None
    latents: torch.Tensor | None = None

    @classmethod
    def text(cls, ids: Sequence[int]) -> "Segment":
        return cls("text", ids=[int(i) for i in ids])

    @classmethod
    def visual(cls, latents: torch.Tensor, kind: str) -> "Segment":
        if kind not in VISUAL_KINDS:
            raise ValueError(f"visual segment kind must be one of {VISUAL_KINDS}, got {kind!r}")
        if latents.ndim != 4:
            raise ValueError(f"a {kind} segment takes latents [C, T', h, w], got {tuple(latents.shape)}")
        return cls(kind, latents=latents)

    @classmethod
    def query(cls, kind: str) -> "Segment":
        if kind not in VISUAL_KINDS:
            raise ValueError(f"query kind must be one of {VISUAL_KINDS}, got {kind!r}")
        return cls(f"{kind}_query")


@dataclass
class SequenceBatch:
    """A padded batch, ready for the backbone.

    inputs_embeds [B, S, dim]; attention_mask [B, S] long (1 = token); position_ids [B, S]; routing_ids [B, S]
    (token ids, the begin marker at visual tokens); modality [B, S] (TEXT/IMAGE/VIDEO/QUERY, -1 at padding);
    query_index [B, Nq] long: where the query tokens sit (None when the samples have none)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    routing_ids: torch.Tensor
    modality: torch.Tensor
    query_index: torch.Tensor | None = None


@dataclass
class PackedText:
    """Token ids of a batch as one tensor: ids [B, L] (right-padded; entries past a row's length are ignored) and
    lengths [B] long. The form the whole-batch builders take, so a batch never passes through Python lists."""

    ids: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]], pad: int, device: torch.device | str = "cpu") -> "PackedText":
        width = max([len(r) for r in rows] + [1])
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor([int(t) for t in r], dtype=torch.long)
        return cls(ids.to(device), torch.tensor([len(r) for r in rows], dtype=torch.long, device=device))

    def to_lists(self) -> list[list[int]]:
        return [row[:n] for row, n in zip(self.ids.tolist(), self.lengths.tolist())]


class UnifiedModel(nn.Module):
    """Backbone + visual token embedding + learned queries + image / video flow heads (the LM head is the backbone's)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config
        dim, p = cfg.backbone.hidden_size, cfg.patch_size
        self.backbone = Transformer(cfg.backbone)
        self.modality_embed = nn.Embedding(4, dim)
        self.visual_in = nn.Linear(cfg.latent_channels * p * p, dim)
        self.visual_pos = nn.Linear(6 * cfg.position_frequencies, dim, bias=False)
        self.image_queries = nn.Parameter(torch.randn(cfg.num_image_queries, dim) * 0.02)
        self.video_queries = nn.Parameter(torch.randn(cfg.num_video_queries, dim) * 0.02)
        for w in (self.modality_embed.weight, self.visual_in.weight, self.visual_pos.weight):
            nn.init.normal_(w, std=0.02)
        nn.init.zeros_(self.visual_in.bias)
        self.visual_stem = VisualStem(cfg.latent_channels, cfg.visual_stem, p, dim) if cfg.visual_stem else None
        self.image_head = ImageHead(cfg.image_head)
        self.video_head = VideoHead(cfg.video_head)
        # the decoding defaults its text was trained for (`generation_config.json`; the pipelines read the fields
        # their callers leave at None)
        self.generation_config = GenerationConfig()

    @property
    def device(self) -> torch.device:
        return self.visual_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual_in.weight.dtype

    def head(self, kind: str) -> ImageHead | VideoHead:
        return self.image_head if kind == "image" else self.video_head

    # ------------------------------------------------------------------------------------------------- embeddings
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> [..., dim]: token embedding + TEXT modality embedding."""
        return self.backbone.embed(ids) + self.modality_embed.weight[TEXT]

    def embed_visual(self, latents: torch.Tensor, kind: str) -> torch.Tensor:
        """Normalised latents [B, C, T', h, w] -> visual tokens [B, T'*(h/p)*(w/p), dim], row-major (t, row, col)."""
        p = self.config.patch_size
        _, _, t, h, w = latents.shape
        x = self.visual_in(patchify(latents.to(self.dtype), p)[0])                       # [B, N, dim]
        if self.visual_stem is not None:
            x = x + self.visual_stem(latents.to(self.dtype))                             # [B, N, dim]
        pos = grid_position_features(t, h // p, w // p, self.config.position_frequencies, latents.device)
        x = x + self.visual_pos(pos.to(self.dtype))
        return x + self.modality_embed.weight[IMAGE if kind == "image" else VIDEO]

    def _segment(self, seg: Segment) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """-> (embeds [n, dim], routing ids [n], modality [n], is_query) for one segment, markers included."""
        ids, dev = self.config.token_ids, self.device
        if seg.kind == "text":
            t = torch.tensor(seg.ids, dtype=torch.long, device=dev)
            return self.embed_text(t), t, torch.full_like(t, TEXT), False
        if seg.kind in VISUAL_KINDS:
            begin, end = (ids.begin_image, ids.end_image) if seg.kind == "image" else (ids.begin_video, ids.end_video)
            vis = self.embed_visual(seg.latents.to(dev).unsqueeze(0), seg.kind)[0]     # [N, dim]
            marks = self.embed_text(torch.tensor([begin, end], device=dev))
            n = vis.shape[0]
            routing = torch.tensor([begin] * (n + 1) + [end], device=dev)
            modality = torch.tensor([TEXT] + [IMAGE if seg.kind == "image" else VIDEO] * n + [TEXT], device=dev)
            return torch.cat([marks[:1], vis, marks[1:]]), routing, modality, False
        if seg.kind in ("image_query", "video_query"):
            image = seg.kind == "image_query"
            begin, slot = (ids.begin_image, ids.image_gen) if image else (ids.begin_video, ids.video_gen)
            queries = self.image_queries if image else self.video_queries                # [Nq, dim]
            q = queries + self.backbone.embed.weight[slot] + self.modality_embed.weight[QUERY]
            emb = torch.cat([self.embed_text(torch.tensor([begin], device=dev)), q])
            routing = torch.tensor([begin] + [slot] * q.shape[0], device=dev)
            modality = torch.tensor([TEXT] + [QUERY] * q.shape[0], device=dev)
            return emb, routing, modality, True
        raise ValueError(f"unknown segment kind {seg.kind!r}")

    def build_batch(self, samples: Sequence[Sequence[Segment]], padding_side: str = "right") -> SequenceBatch:
        """Embed and pad samples (each a list of segments) into one `SequenceBatch`.

        `padding_side="right"` for one-shot forwards, `"left"` for decoding with caches. Every sample must hold the
        same number of query tokens (0 or one query segment)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not samples:
            raise ValueError("build_batch needs at least one sample")
        rows = []
        for segments in samples:
            parts = [self._segment(seg) for seg in segments]
            if not parts:
                raise ValueError("a sample needs at least one segment")
            emb = torch.cat([p[0] for p in parts])
            routing = torch.cat([p[1] for p in parts])
            modality = torch.cat([p[2] for p in parts])
            offset, qpos = 0, []
            for e, _, m, is_q in parts:
                if is_q:
                    qpos.extend(offset + i for i in range(e.shape[0]) if m[i] == QUERY)
                offset += e.shape[0]
            rows.append((emb, routing, modality, qpos))
        n_query = {len(r[3]) for r in rows}
        if len(n_query) != 1:
            raise ValueError(f"all samples of a batch need the same number of query tokens, got {sorted(n_query)}")
        b, s = len(rows), max(r[0].shape[0] for r in rows)
        pad_id = self.config.token_ids.pad
        embeds = self.embed_text(torch.full((b, s), pad_id, device=self.device))        # [B, S, dim]
        mask = torch.zeros(b, s, dtype=torch.long, device=self.device)
        routing = torch.full((b, s), pad_id, dtype=torch.long, device=self.device)
        modality = torch.full((b, s), -1, dtype=torch.long, device=self.device)
        query_index = torch.zeros(b, n_query.pop(), dtype=torch.long, device=self.device)
        for i, (emb, rid, mod, qpos) in enumerate(rows):
            n = emb.shape[0]
            start = 0 if padding_side == "right" else s - n
            embeds[i, start:start + n] = emb
            mask[i, start:start + n] = 1
            routing[i, start:start + n] = rid
            modality[i, start:start + n] = mod
            if qpos:
                query_index[i] = torch.tensor(qpos, device=self.device) + start
        return SequenceBatch(embeds, mask, positions_from_mask(mask), routing, modality,
                             query_index if query_index.shape[1] else None)

    # ---------------------------------------------------------------------------------------------------- forward
    def forward(self, batch: SequenceBatch, cache: BackboneCache | None = None, logits_to_keep: int = 0,
                return_logits: bool = True) -> TransformerOutput:
        """Run the backbone (causal) over a built batch -> logits [B, S', vocab], hidden_states [B, S, dim]."""
        return self.backbone(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids, routing_ids=batch.routing_ids, cache=cache,
                             logits_to_keep=logits_to_keep, return_logits=return_logits)

    def query_states(self, batch: SequenceBatch) -> torch.Tensor:
        """Backbone hidden states at the query tokens -> [B, Nq, dim] (the condition of a flow head)."""
        if batch.query_index is None:
            raise ValueError("the batch has no query tokens")
        hidden = self(batch, return_logits=False).hidden_states                         # [B, S, dim]
        idx = batch.query_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])          # [B, Nq, dim]
        return hidden.gather(1, idx)

    def prompt_samples(self, prompts: Sequence[Sequence[int]], kind: str) -> list[list[Segment]]:
        """Token ids of each prompt -> generation samples `<bos> prompt <begin_kind> <kind_gen> x Nq`."""
        bos = self.config.token_ids.bos
        return [[Segment.text([bos, *ids]), Segment.query(kind)] for ids in prompts]

    def encode_prompts(self, prompts: Sequence[Sequence[int]], kind: str) -> torch.Tensor:
        """One backbone forward over all prompts -> conditions [B, Nq, dim]. An empty prompt is the null condition."""
        return self.query_states(self.build_batch(self.prompt_samples(prompts, kind), "right"))

    def caption_samples(self, latents: Sequence[torch.Tensor], kind: str,
                        prompts: Sequence[Sequence[int]] | None = None) -> list[list[Segment]]:
        """Latents [C, T', h, w] per sample (+ optional text after them) -> `<bos> <begin> visual <end> prompt`."""
        prompts = prompts if prompts is not None else [[] for _ in latents]
        bos = self.config.token_ids.bos
        return [[Segment.text([bos]), Segment.visual(z, kind)] + ([Segment.text(p)] if len(p) else [])
                for z, p in zip(latents, prompts)]

    def generate_text(self, samples: Sequence[Sequence[Segment]], config: GenerationConfig,
                      generator: torch.Generator | list[torch.Generator] | None = None,
                      decode: Callable[[list[int]], str] | None = None) -> TextGenerationResult:
        """Continue each sample with text: left-pad, prefill once, decode with the caches (decoders/text.py)."""
        batch = self.build_batch(samples, "left")
        text_ids = batch.routing_ids.masked_fill(batch.modality != TEXT, -1)           # [B, S]
        return generate_text(self.backbone, self.embed_text, batch.inputs_embeds, batch.attention_mask,
                             batch.position_ids, batch.routing_ids, text_ids, config, generator, decode,
                             pad_token_id=self.config.token_ids.pad)

    # --------------------------------------------------------------------------------------------------- training
    def packed_generation_batch(self, prompts: "PackedText", kind: str) -> SequenceBatch:
        """`<bos> prompt <begin_kind> <kind_gen> x Nq`, right-padded, built with whole-batch tensor ops (no per-sample
        Python, no host synchronisation): equal to `build_batch(prompt_samples(...), "right")` bit for bit.

        prompts: ids [B, L] (entries past each row's length are ignored) and lengths [B] on the model's device."""
        ids, lengths = prompts.ids.to(self.device), prompts.lengths.to(self.device)
        tok_ids, dev = self.config.token_ids, self.device
        begin, slot = (tok_ids.begin_image, tok_ids.image_gen) if kind == "image" else \
            (tok_ids.begin_video, tok_ids.video_gen)
        queries = self.image_queries if kind == "image" else self.video_queries            # [Nq, dim]
        b, width, nq = ids.shape[0], ids.shape[1], queries.shape[0]
        s = 2 + width + nq
        pos = torch.arange(s, device=dev).unsqueeze(0)                                     # [1, S]
        lengths = lengths.unsqueeze(1)                                                     # [B, 1]
        padded = torch.cat([ids, ids.new_full((b, 2 + nq), tok_ids.pad)], 1)              # [B, S]
        prompt_tok = padded.gather(1, (pos - 1).clamp(min=0).expand(b, -1))               # prompt token at pos
        first_q = 2 + lengths                                                              # [B, 1]
        is_query = (pos >= first_q) & (pos < first_q + nq)                                 # [B, S]
        tok = torch.where(pos == 0, tok_ids.bos, torch.where(pos <= lengths, prompt_tok, torch.where(
            pos == 1 + lengths, begin, torch.where(is_query, slot, tok_ids.pad))))         # [B, S]
        mask = (pos < first_q + nq).long()                                                 # [B, S]
        base = self.backbone.embed(tok)                                                    # [B, S, dim]
        q = queries[(pos - first_q).clamp(0, nq - 1)]                                      # [B, S, dim]
        emb = torch.where(is_query.unsqueeze(-1), q + base, base)
        modality = torch.where(is_query, QUERY, TEXT)                                      # [B, S]
        emb = emb + self.modality_embed.weight[modality]
        modality = modality.masked_fill(mask == 0, -1)
        query_index = first_q + torch.arange(nq, device=dev)                               # [B, Nq]
        return SequenceBatch(emb, mask, positions_from_mask(mask), tok, modality, query_index)

    def packed_caption_batch(self, latents: torch.Tensor, kind: str,
                             captions: "PackedText") -> tuple[SequenceBatch, torch.Tensor]:
        """`<bos> <begin> visual <end> caption <eos>` for latents [B, C, T', h, w] of one shape, right-padded, with the
        next-token labels [B, S] (-100 outside `caption <eos>`), built with whole-batch tensor ops. Equal to
        `build_batch(caption_samples(...))` up to the batched visual projection's rounding."""
        ids, lengths = captions.ids.to(self.device), captions.lengths.to(self.device)
        tok_ids, dev = self.config.token_ids, self.device
        begin, end = (tok_ids.begin_image, tok_ids.end_image) if kind == "image" else \
            (tok_ids.begin_video, tok_ids.end_video)
        vis = self.embed_visual(latents.to(dev), kind)                                     # [B, N, dim]
        b, n, width = vis.shape[0], vis.shape[1], ids.shape[1]
        col = torch.arange(width + 1, device=dev).unsqueeze(0)                             # [1, L + 1]
        lengths = lengths.unsqueeze(1)                                                     # [B, 1]
        text = torch.cat([ids, ids.new_full((b, 1), tok_ids.pad)], 1)                      # [B, L + 1]
        text = torch.where(col < lengths, text, torch.where(col == lengths, tok_ids.eos, tok_ids.pad))
        head = torch.stack([ids.new_full((b,), tok_ids.bos), ids.new_full((b,), begin)], 1)  # [B, 2] (no copy)
        tail = torch.cat([ids.new_full((b, 1), end), text], 1)                             # [B, L + 2]
        emb = torch.cat([self.embed_text(head), vis, self.embed_text(tail)], 1)           # [B, S, dim]
        s = emb.shape[1]
        pos = torch.arange(s, device=dev).unsqueeze(0)                                     # [1, S]
        mask = (pos < 4 + n + lengths).long()                                              # [B, S]
        routing = torch.cat([head, ids.new_full((b, n), begin), tail], 1)                  # [B, S]
        visual = (pos >= 2) & (pos < 2 + n)
        modality = torch.where(visual, IMAGE if kind == "image" else VIDEO, TEXT).expand(b, -1)
        modality = modality.masked_fill(mask == 0, -1)
        labels = torch.cat([routing[:, 1:], routing.new_full((b, 1), -100)], 1)            # next token
        labels = labels.masked_fill((pos < 2 + n) | (pos > 2 + n + lengths), -100)        # caption <eos> only
        return SequenceBatch(emb, mask, positions_from_mask(mask), routing, modality), labels

    def generation_loss(self, prompts: "Sequence[Sequence[int]] | PackedText", latents: torch.Tensor, kind: str,
                        generator: torch.Generator | None = None, repeats: int = 1,
                        weighting: str = "none") -> torch.Tensor:
        """Flow-matching loss of the `kind` head on normalised latents [B, C, T', h, w] given prompt ids (lists, or a
        `PackedText` already on the device).

        Each prompt is replaced by the empty prompt with probability `condition_dropout`, so the head also learns the
        unconditional velocity that classifier-free guidance needs. `repeats` > 1 runs the backbone once per prompt and
        the head on `repeats` noise levels and noises of each latent (rows [B * repeats], sample-major): more of the
        head's signal per backbone pass; the loss is the mean over all rows, and `repeats=1` is the plain loss.
        The dropout is drawn on `generator`'s device, else on the prompts' device (the CPU for lists), so nothing
        waits for the host. `weighting` weighs each row by its noise level (`decoders.flow.loss_weights`)."""
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if not isinstance(prompts, PackedText):
            prompts = PackedText.from_lists(prompts, self.config.token_ids.pad)
        where = generator.device if generator is not None else prompts.lengths.device
        drop = torch.rand(prompts.lengths.shape[0], generator=generator, device=where) < self.config.condition_dropout
        prompts = PackedText(prompts.ids, prompts.lengths.masked_fill(drop.to(prompts.lengths.device), 0))
        cond = self.query_states(self.packed_generation_batch(prompts, kind))          # [B, Nq, dim]
        if repeats > 1:
            cond, latents = cond.repeat_interleave(repeats, 0), latents.repeat_interleave(repeats, 0)
        return flow_matching_loss(self.head(kind), latents, cond, generator=generator, weighting=weighting)

    def caption_loss(self, latents: "Sequence[torch.Tensor] | torch.Tensor", kind: str,
                     captions: "Sequence[Sequence[int]] | PackedText") -> torch.Tensor:
        """Next-token cross-entropy of `caption <eos>` after `<bos> <begin> visual <end>`; latents [C, T', h, w] each
        (or stacked [B, C, T', h, w]), captions as id lists or a `PackedText`."""
        if not isinstance(captions, PackedText):
            captions = PackedText.from_lists(captions, self.config.token_ids.pad)
        if not torch.is_tensor(latents):
            if len({tuple(z.shape) for z in latents}) != 1:
                return self._caption_loss_by_segments(latents, kind, captions.to_lists())
            latents = torch.stack(list(latents))
        batch, labels = self.packed_caption_batch(latents, kind, captions)
        logits = self(batch).logits                                                     # [B, S, V]
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    def caption_log_likelihood(self, latents: torch.Tensor, kind: str,
                               captions: "Sequence[Sequence[int]] | PackedText") -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-likelihood of each `caption <eos>` after `<bos> <begin> visual <end>`, in one backbone
        forward, no sampling -> (sum of the log-probabilities [B] float32, number of scored tokens [B] long).

        latents [B, C, T', h, w] (one shape); captions as id lists or a `PackedText`. The scored tokens are the
        caption's and the closing `<eos>`, so a caption that leaves something in the picture unsaid scores lower."""
        if not isinstance(captions, PackedText):
            captions = PackedText.from_lists(captions, self.config.token_ids.pad)
        batch, labels = self.packed_caption_batch(latents, kind, captions)
        logits = self(batch).logits.float()                                             # [B, S, V]
        scored = labels != -100                                                         # [B, S]
        log_probs = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1))[..., 0]
        return (log_probs * scored).sum(1), scored.sum(1)

    def _caption_loss_by_segments(self, latents: Sequence[torch.Tensor], kind: str,
                                  captions: Sequence[Sequence[int]]) -> torch.Tensor:
        """`caption_loss` for latents of different shapes: one segment list per sample (`build_batch`)."""
        eos = self.config.token_ids.eos
        batch = self.build_batch(self.caption_samples(latents, kind, [list(c) + [eos] for c in captions]), "right")
        logits = self(batch).logits                                                     # [B, S, V]
        prefix = [1 + (z.shape[1] * (z.shape[2] // self.config.patch_size) * (z.shape[3] // self.config.patch_size))
                  + 2 for z in latents]                                                 # <bos> <begin> N <end>
        labels = torch.full_like(batch.routing_ids, -100)
        for i, (n, cap) in enumerate(zip(prefix, captions)):
            labels[i, n - 1:n - 1 + len(cap) + 1] = torch.tensor(list(cap) + [eos], device=labels.device)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    # ------------------------------------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write `config.json` and `model.safetensors` (and `generation_config.json` when the decoding defaults are not
        the plain ones) into folder `path`, each atomically (temp file + rename)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "model.safetensors") as tmp:
            save_model(self, tmp, metadata={"format": "pt"})
        text = json.dumps(self.config.to_dict(), indent=2) + "\n"
        with atomic_path(path / "config.json") as tmp:
            Path(tmp).write_text(text)
        generation = self.generation_config.to_diff_dict()
        if generation:
            with atomic_path(path / GENERATION_CONFIG_FILE) as tmp:
                Path(tmp).write_text(json.dumps(generation, indent=2) + "\n")
        else:                                              # a stale file would give the folder another model's defaults
            (path / GENERATION_CONFIG_FILE).unlink(missing_ok=True)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "UnifiedModel":
        """Load a folder written by `save_pretrained` (safetensors only; nothing is unpickled)."""
        path = Path(path)
        for name in ("config.json", "model.safetensors"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path}: no {name} (not a saved UnifiedModel folder)")
        config = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
        with torch.device(device), empty_init():          # allocated on `device`, not initialised (empty_init.py)
            model = cls(config)
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=str(device))
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit the config: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        # rotary tables computed on the CPU and moved, as for a model built on the CPU (the same bits everywhere)
        model.backbone.rotary = nn.ModuleDict(Transformer._rotaries(config.backbone)).to(device)
        if (path / GENERATION_CONFIG_FILE).is_file():
            model.generation_config = GenerationConfig.from_json_file(path / GENERATION_CONFIG_FILE)
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()


