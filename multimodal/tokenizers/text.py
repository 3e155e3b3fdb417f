"""Byte-level BPE text tokenizer (Hugging Face ``tokenizers``, ``tokenizer.json`` format).

The tokenizer works on UTF-8 bytes (GPT-2 style byte-level pre-tokenisation), so every Unicode string
encodes without unknown tokens and ``decode(encode(text)) == text``. Special tokens lay out the unified
sequence::

    <|begin_of_text|> caption ... <|begin_image|> [image tokens] <|end_image|> ... <|end_of_text|>
    <|begin_video|> [video tokens] <|end_video|>      <|image_gen|> / <|video_gen|>: generation query slots
    <|pad|>: padding

Special tokens are matched only when ``allow_special=True`` (the default is False: text typed by a
user that happens to contain ``<|pad|>`` stays plain text, byte for byte).

:meth:`TextTokenizer.from_file` also loads a DeepSeek ``tokenizer.json`` (checkpoint path): its own
begin/end-of-sentence and padding tokens are used for our text roles, and the media tokens this
package needs are appended after its vocabulary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from multimodal.io.atomic import atomic_path


@dataclass(frozen=True)
class SpecialTokens:
    """Strings of the special tokens, by role."""

    bos: str = "<|begin_of_text|>"
    eos: str = "<|end_of_text|>"
    pad: str = "<|pad|>"
    begin_image: str = "<|begin_image|>"
    end_image: str = "<|end_image|>"
    begin_video: str = "<|begin_video|>"
    end_video: str = "<|end_video|>"
    image_gen: str = "<|image_gen|>"
    video_gen: str = "<|video_gen|>"

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


SPECIAL_ROLES = tuple(SpecialTokens().as_dict())

# DeepSeek V3 / V3.2 / V4 ``tokenizer.json`` names for the text roles ("｜" is U+FF5C, "▁" is U+2581).
DEEPSEEK_TEXT_ROLES = {
    "bos": "<｜begin▁of▁sentence｜>",
    "eos": "<｜end▁of▁sentence｜>",
    "pad": "<｜▁pad▁｜>",
}


class TextTokenizer:
    """Byte-level BPE tokenizer with the package's special tokens.

    Build with :meth:`train` (on an iterable of captions) or :meth:`from_file`; save with :meth:`save`.
    ``encode`` returns a list of ids; ``__call__`` pads a batch to a rectangle with an attention mask.
    """

    def __init__(self, tokenizer: Tokenizer, special: SpecialTokens | None = None) -> None:
        self.tokenizer = tokenizer
        self.special = special or SpecialTokens()
        missing = [tok for tok in self.special.as_dict().values() if tokenizer.token_to_id(tok) is None]
        if missing:
            tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self.ids = {role: tokenizer.token_to_id(tok) for role, tok in self.special.as_dict().items()}
        self.special_ids = frozenset(self.ids.values())
        # added tokens (ours and e.g. DeepSeek's): id -> (content, is_special)
        self.added = {i: (t.content, t.special) for i, t in tokenizer.get_added_tokens_decoder().items()}
        self._plain = self._make_plain()

    # ------------------------------------------------------------- construction
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 4096,
        min_frequency: int = 2,
        special: SpecialTokens | None = None,
    ) -> "TextTokenizer":
        """Train a byte-level BPE on ``texts``; specials get ids 0..8 in :data:`SPECIAL_ROLES` order."""
        special = special or SpecialTokens()
        if vocab_size < 256 + len(SPECIAL_ROLES):
            raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_ROLES)} (bytes + specials), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([])  # no normalisation: bytes in, bytes out
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special.as_dict().values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, special)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        """Load a ``tokenizer.json`` written by :meth:`save`, or a DeepSeek ``tokenizer.json``."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"cannot load tokenizer {path}: {exc}") from exc
        special = SpecialTokens()
        vocab = tok.get_vocab(with_added_tokens=True)
        overrides = {role: name for role, name in DEEPSEEK_TEXT_ROLES.items() if name in vocab}
        if overrides:
            special = SpecialTokens(**{**special.as_dict(), **overrides})
        return cls(tok, special)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (to ``path``, or inside it if it is a directory), atomically."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokenizer.json"
        with atomic_path(path) as tmp:
            self.tokenizer.save(tmp)
        return path

    def _make_plain(self) -> Tokenizer:
        """A copy whose added tokens are never matched in input text (they stay in the vocabulary)."""
        spec = json.loads(self.tokenizer.to_str())
        spec["added_tokens"] = []
        return Tokenizer.from_str(json.dumps(spec))

    # ------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def bos_id(self) -> int:
        return self.ids["bos"]

    @property
    def eos_id(self) -> int:
        return self.ids["eos"]

    @property
    def pad_id(self) -> int:
        return self.ids["pad"]

    def token_id(self, role_or_token: str) -> int:
        """Id of a special role (``"begin_image"``) or of any token string."""
        if role_or_token in self.ids:
            return self.ids[role_or_token]
        tid = self.tokenizer.token_to_id(role_or_token)
        if tid is None:
            raise KeyError(f"unknown token or role: {role_or_token!r}")
        return tid

    # ------------------------------------------------------------- encode / decode
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False, allow_special: bool = False) -> list[int]:
        """Text -> token ids. Special-token strings inside ``text`` are matched only if ``allow_special``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        engine = self.tokenizer if allow_special else self._plain
        ids = engine.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        """`encode` of every text (special-token strings inside them are plain text), in one call of the Rust
        tokenizer, which spreads a long batch over the CPU cores."""
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"text must be str, got {type(t).__name__}")
        head, tail = [self.bos_id] if add_bos else [], [self.eos_id] if add_eos else []
        return [head + e.ids + tail for e in self._plain.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Token ids -> text. Special tokens are dropped unless ``skip_special_tokens=False``."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        # runs of ordinary ids go through the byte-level decoder; added tokens are spliced in as text
        out, run = [], []
        for i in ids:
            if i in self.added or i in self.special_ids:
                content, special = self.added.get(i, (self.tokenizer.id_to_token(i), True))
                if run:
                    out.append(self._plain.decode(run, skip_special_tokens=False))
                    run = []
                if not (skip_special_tokens and (special or i in self.special_ids)):
                    out.append(content)
            else:
                run.append(i)
        if run:
            out.append(self._plain.decode(run, skip_special_tokens=False))
        return "".join(out)

    def __call__(self, texts: str | Sequence[str], add_bos: bool = True, add_eos: bool = True, max_length: int | None = None, pad_to: str = "right"):
        """Batch encode to padded tensors: ``{"input_ids": (B, N) long, "attention_mask": (B, N) long}``.

        Sequences longer than ``max_length`` are cut (keeping ``eos`` last when ``add_eos``).
        """
        import torch

        if isinstance(texts, str):
            texts = [texts]
        seqs = self.encode_batch(texts, add_bos, add_eos)
        if max_length is not None:
            if max_length < 1 + int(add_eos):
                raise ValueError(f"max_length must be >= {1 + int(add_eos)}, got {max_length}")
            cut = [s[: max_length - 1] + [s[-1]] if add_eos else s[:max_length] for s in seqs]
            seqs = [s if len(s) <= max_length else c for s, c in zip(seqs, cut)]
        n = max((len(s) for s in seqs), default=0)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for row, s in enumerate(seqs):
            sl = slice(0, len(s)) if pad_to == "right" else slice(n - len(s), n)
            ids[row, sl] = torch.tensor(s, dtype=torch.long)
            mask[row, sl] = 1
        return {"input_ids": ids, "attention_mask": mask}
