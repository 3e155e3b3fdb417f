"""The text head: the backbone's LM head plus batched sampling with the backbone's caches.

The prompt (text, or visual tokens followed by text) is prefilled once into a `BackboneCache`; every further token
costs one single-position forward. Each step turns the last logits [B, V] into tokens:

    repetition penalty (CTRL, arXiv 1909.05858: positive logits / p, negative * p, over the prompt's text and the
    generated tokens) -> [no immediate repeat: the row's last token is blocked] -> temperature -> top-k -> top-p
    (nucleus, Holtzman et al. arXiv 1904.09751) -> argmax or a draw from the softmax with that row's `torch.Generator`

(the order transformers' `generate` applies them). Rows stop at `eos`, at any of `stop_token_ids`, when the decoded
text contains one of `stop_strings` (the text is cut before it), or after `max_new_tokens`. Finished rows keep
feeding padding, which no other row can see, so a batch decodes exactly as its rows would alone.

A model folder may hold a `generation_config.json` of `GenerationConfig` fields (as transformers' checkpoints do): the
decoding defaults its text was trained for. The built-in model's says `no_immediate_repeat`: the world's captions never
hold one token twice in a row, and its stage-9 weights stuttered without the block in 4% of test clip captions
("digit digit digit 7").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..backbone.cache import BackboneCache
from ..backbone.transformer import Transformer
from ..config_keys import check, reject_unknown_keys

GENERATION_CONFIG_FILE = "generation_config.json"


@dataclass
class GenerationConfig:
    """Decoding settings. `do_sample=False` is greedy (temperature, top-k and top-p are then ignored)."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0              # eos and stop tokens cannot be chosen before this many new tokens
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0                       # 0 = off
    top_p: float = 1.0                   # 1 = off
    repetition_penalty: float = 1.0      # 1 = off
    no_immediate_repeat: bool = False    # a token never directly follows itself (for text that never repeats one)
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    eos_token_id: int | None = None
    vocab_limit: int | None = None       # ids >= this are never chosen (a backbone vocabulary padded past the tokenizer's)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got "
                             f"{self.min_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        self.stop_strings = tuple(s for s in self.stop_strings if s)

    def to_diff_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults (what `generation_config.json` holds), JSON-ready."""
        default = asdict(GenerationConfig())
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v != default[k]}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "generation config") -> "GenerationConfig":
        """Fields by name; an unknown name is rejected naming it and `source`."""
        check(isinstance(values, dict), f"{source}: expected a JSON object of generation settings, got "
                                        f"{type(values).__name__}")
        reject_unknown_keys(cls, values, f"{source}: GenerationConfig")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "GenerationConfig":
        """Read a `generation_config.json`; a file that is not valid JSON is rejected naming it."""
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(values, str(path))


@dataclass
class TextGenerationResult:
    """tokens: generated ids per row (stop token excluded); text: decoded (cut at a stop string) when a decoder was
    given; finish_reason: "eos", "stop_token", "stop_string" or "length" per row."""

    tokens: list[list[int]]
    text: list[str] | None = None
    finish_reason: list[str] = field(default_factory=list)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [B, V], seen [B, V] bool -> logits with seen tokens made less likely."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row [B, V] (ties at the k-th value kept), -inf elsewhere."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]                                      # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one) per row [B, V]."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum - sorted_logits.softmax(dim=-1) >= p                          # mass before this token >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def block_last_token(scores: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """scores [B, V], last [B] (each row's previous token, -1 for none) -> scores with that token at -inf."""
    rows = (last >= 0).nonzero().squeeze(1)                                         # [R]
    scores = scores.clone()
    scores[rows, last[rows]] = float("-inf")
    return scores


def process_logits(logits: torch.Tensor, seen: torch.Tensor, cfg: GenerationConfig,
                   last: torch.Tensor | None = None) -> torch.Tensor:
    """Raw logits [B, V] -> the scores tokens are chosen from (fp32). `last` [B]: each row's previous token (-1 for
    none), blocked when `cfg.no_immediate_repeat`."""
    scores = apply_repetition_penalty(logits.float(), seen, cfg.repetition_penalty)
    if cfg.no_immediate_repeat and last is not None:
        scores = block_last_token(scores, last)
    if cfg.vocab_limit is not None and cfg.vocab_limit < scores.shape[-1]:
        scores[:, cfg.vocab_limit:] = float("-inf")
    if not cfg.do_sample:
        return scores
    scores = scores / cfg.temperature
    return top_p_filter(top_k_filter(scores, cfg.top_k), cfg.top_p)


def choose_tokens(scores: torch.Tensor, cfg: GenerationConfig,
                  generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """scores [B, V] -> tokens [B]: argmax, or one draw per row with that row's generator."""
    if not cfg.do_sample:
        return scores.argmax(dim=-1)
    probs = scores.softmax(dim=-1)
    out = []
    for row, gen in zip(probs, generators):
        if gen is not None and gen.device != row.device:
            draw = torch.multinomial(row.cpu(), 1, generator=gen).to(row.device)
        else:
            draw = torch.multinomial(row, 1, generator=gen)
        out.append(draw)
    return torch.cat(out)


def _generators(generator, batch: int) -> list[torch.Generator | None]:
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
        return list(generator)
    return [generator] * batch


@torch.no_grad()
def generate_text(
    backbone: Transformer,
    embed: Callable[[torch.Tensor], torch.Tensor],
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    routing_ids: torch.Tensor,
    prompt_text_ids: torch.Tensor,
    config: GenerationConfig,
    generator: torch.Generator | list[torch.Generator] | None = None,
    decode: Callable[[list[int]], str] | None = None,
    pad_token_id: int = 0,
) -> TextGenerationResult:
    """Prefill a left-padded prompt once, then decode one token per step with the cache.

    inputs_embeds [B, S, dim], attention_mask / position_ids / routing_ids [B, S]; prompt_text_ids [B, S] (token ids
    the repetition penalty counts, -1 elsewhere); `embed(ids [B, 1]) -> [B, 1, dim]` embeds new tokens."""
    b, _, _ = inputs_embeds.shape
    device, vocab = inputs_embeds.device, backbone.config.vocab_size
    gens = _generators(generator, b)
    stops = set(config.stop_token_ids)
    eos = config.eos_token_id
    seen = torch.zeros(b, vocab, dtype=torch.bool, device=device)
    valid = prompt_text_ids >= 0
    seen.scatter_(1, prompt_text_ids.clamp(min=0), valid)                           # [B, V]
    previous = prompt_text_ids[:, -1].clone()                                       # [B] the prompt's last token
    tokens: list[list[int]] = [[] for _ in range(b)]
    reasons = ["length"] * b
    done = [False] * b
    if config.max_new_tokens == 0:
        return _finish(tokens, reasons, decode, config)
    cache: BackboneCache = backbone.new_cache()
    out = backbone(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                   routing_ids=routing_ids, cache=cache, logits_to_keep=1)
    logits = out.logits[:, -1]                                                      # [B, V]
    mask, last = attention_mask, position_ids[:, -1:]
    for step in range(config.max_new_tokens):
        if step < config.min_new_tokens:
            blocked = [t for t in (eos, *stops) if t is not None]
            logits = logits.clone()
            logits[:, blocked] = float("-inf")
        nxt = choose_tokens(process_logits(logits, seen, config, previous), config, gens)  # [B]
        previous = nxt
        for i, tok in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if tok == eos or tok in stops:
                done[i], reasons[i] = True, "eos" if tok == eos else "stop_token"
                continue
            tokens[i].append(tok)
            seen[i, tok] = True
            if config.stop_strings and decode is not None and any(s in decode(tokens[i]) for s in config.stop_strings):
                done[i], reasons[i] = True, "stop_string"
        if all(done) or step == config.max_new_tokens - 1:
            break
        feed = torch.tensor([pad_token_id if d else t for d, t in zip(done, nxt.tolist())], device=device)[:, None]
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        last = last + 1
        out = backbone(inputs_embeds=embed(feed), attention_mask=mask, position_ids=last, routing_ids=feed,
                       cache=cache)
        logits = out.logits[:, -1]
    return _finish(tokens, reasons, decode, config)


def _finish(tokens: list[list[int]], reasons: list[str], decode, config: GenerationConfig) -> TextGenerationResult:
    if decode is None:
        return TextGenerationResult(tokens, None, reasons)
    texts = []
    for row in tokens:
        text = decode(row)
        cut = [text.index(s) for s in config.stop_strings if s in text]
        texts.append(text[:min(cut)] if cut else text)
    return TextGenerationResult(tokens, texts, reasons)
