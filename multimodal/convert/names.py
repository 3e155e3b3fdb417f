"""Parameter names: ours <-> the DeepSeek-V4 checkpoint layout that transformers' `save_pretrained` writes.

Ours are DeepSeek's own names with a few readable changes: the mHC parameters live in sub-modules
(`layers.{i}.hc_attn.fn` <-> `model.layers.{i}.hc_attn_fn`), the attention's KV norm is `attn.kv_norm`
(on disk `attn.norm`), and routed experts are stacked tensors `ffn.experts.w{1,2,3}` [E, ...] (on disk one
`ffn.experts.{e}.w{1,2,3}.weight` per expert). On disk everything but the head carries the `model.` prefix and the
embedding is `model.embed_tokens.weight` and the final mHC collapse `model.hc_head.hc_{fn,base,scale}`; loading also accepts the bare DeepSeek names (`embed.weight`, `layers.*`).
"""

from __future__ import annotations

import re

_EXPERT = re.compile(r"^((?:layers\.\d+|mtp\.\d+\.block)\.ffn\.experts)\.(\d+)\.(w[123])\.weight$")
_STACKED = re.compile(r"^((?:layers\.\d+|mtp\.\d+\.block)\.ffn\.experts)\.(w[123])$")
_HC = re.compile(r"^((?:layers\.\d+\.)?|mtp\.\d+\.block\.)hc_(attn|ffn|head)_(fn|base|scale)$")


def disk_to_ours(key: str) -> str:
    """One on-disk key -> our name (expert keys keep their index: `layers.{i}.ffn.experts.{e}.w1.weight`)."""
    if key in ("lm_head.weight", "head.weight"):
        return "head.weight"
    key = key.removeprefix("model.")
    if key in ("embed_tokens.weight", "embed.weight"):
        return "embed.weight"
    m = _HC.match(key)
    if m:
        prefix, kind, part = m.groups()
        return f"{prefix}hc_{kind}.{part}"
    m = re.match(r"^hc_head\.hc_(fn|base|scale)$", key)      # how transformers writes the final collapse
    if m:
        return f"hc_head.{m.group(1)}"
    return re.sub(r"\.attn\.norm\.", ".attn.kv_norm.", key)


def ours_to_disk(key: str) -> str:
    if key == "head.weight":
        return key
    if key == "embed.weight":
        return "model.embed_tokens.weight"
    if key.startswith("hc_head."):
        return "model.hc_head.hc_" + key.removeprefix("hc_head.")
    m = re.match(r"^((?:layers\.\d+\.)?|mtp\.\d+\.block\.)hc_(attn|ffn|head)\.(fn|base|scale)$", key)
    if m:
        prefix, kind, part = m.groups()
        key = f"{prefix}hc_{kind}_{part}"
    key = re.sub(r"\.attn\.kv_norm\.", ".attn.norm.", key)
    return "model." + key


def expert_key(key: str) -> tuple[str, int, str] | None:
    """`layers.{i}.ffn.experts.{e}.w1.weight` -> ("layers.{i}.ffn.experts", e, "w1"); None for other keys."""
    m = _EXPERT.match(key)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def stacked_key(key: str) -> tuple[str, str] | None:
    """`layers.{i}.ffn.experts.w1` -> ("layers.{i}.ffn.experts", "w1"); None for other keys."""
    m = _STACKED.match(key)
    return (m.group(1), m.group(2)) if m else None
