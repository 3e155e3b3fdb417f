"""Parameter names: ours <-> the DeepSeek-V3 / V3.2 layout that transformers' `save_pretrained` writes
(`deepseek_v3`, `deepseek_v32`; attention.md §1.2 lists the reference <-> Hugging Face correspondence).

| ours (DeepSeek reference names)            | on disk (Hugging Face)                                   |
|--------------------------------------------|----------------------------------------------------------|
| embed.weight / head.weight / norm.weight   | model.embed_tokens.weight / lm_head.weight / model.norm.weight |
| layers.{i}.attn_norm / ffn_norm            | model.layers.{i}.input_layernorm / post_attention_layernorm |
| layers.{i}.attn.wq_a / q_norm / wq_b / wq  | ....self_attn.q_a_proj / q_a_layernorm / q_b_proj / q_proj |
| layers.{i}.attn.wkv_a / kv_norm / wkv_b / wo | ....self_attn.kv_a_proj_with_mqa / kv_a_layernorm / kv_b_proj / o_proj |
| layers.{i}.attn.indexer.{wq_b,wk,k_norm,weights_proj} | ....self_attn.indexer.{same}                   |
| layers.{i}.ffn.w1 / w3 / w2                | ....mlp.gate_proj / up_proj / down_proj                  |
| layers.{i}.ffn.gate.weight / gate.bias     | ....mlp.gate.weight / mlp.gate.e_score_correction_bias   |
| layers.{i}.ffn.experts.{e}.w1              | ....mlp.experts.{e}.gate_proj (stacked to [E, ...] by the loader) |
| layers.{i}.ffn.shared_experts.w1           | ....mlp.shared_experts.gate_proj                          |
| mtp.{k}.{enorm,hnorm,eh_proj,norm}         | model.layers.{n+k}.{enorm,hnorm,eh_proj,shared_head.norm} (DeepSeek's layout) |
| mtp.{k}.block.*                            | model.layers.{n+k}.* (same names as a layer)              |

`n` is `num_hidden_layers`. DeepSeek's MTP layers also repeat the embedding and head (`embed_tokens`,
`shared_head.head`); we write those copies and ignore them on load (`V3Names.ignored`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATTN = {"wq_a": "q_a_proj", "q_norm": "q_a_layernorm", "wq_b": "q_b_proj", "wq": "q_proj",
         "wkv_a": "kv_a_proj_with_mqa", "kv_norm": "kv_a_layernorm", "wkv_b": "kv_b_proj", "wo": "o_proj"}
_MLP = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_MTP = {"enorm": "enorm", "hnorm": "hnorm", "eh_proj": "eh_proj", "norm": "shared_head.norm"}


def _invert(d: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in d.items()}


def _block_to_disk(rest: str) -> str:
    """A block-relative name of ours (`attn.wq_a.weight`) -> the Hugging Face one (`self_attn.q_a_proj.weight`)."""
    parts = rest.split(".")
    if parts[0] in _LAYER:
        return ".".join([_LAYER[parts[0]]] + parts[1:])
    if parts[0] == "attn":
        if parts[1] == "indexer":
            return "self_attn." + ".".join(parts[1:])
        return ".".join(["self_attn", _ATTN.get(parts[1], parts[1])] + parts[2:])
    if parts[0] == "ffn":
        tail = parts[1:]
        if tail[0] in _MLP:
            return ".".join(["mlp", _MLP[tail[0]]] + tail[1:])
        if tail[0] == "gate":
            return "mlp.gate.e_score_correction_bias" if tail[1] == "bias" else "mlp.gate." + ".".join(tail[1:])
        if tail[0] == "shared_experts":
            return ".".join(["mlp.shared_experts", _MLP[tail[1]]] + tail[2:])
        if tail[0] == "experts":
            return ".".join(["mlp.experts", tail[1], _MLP[tail[2]]] + tail[3:])
    return rest


def _block_to_ours(rest: str) -> str:
    parts = rest.split(".")
    layer, attn, mlp = _invert(_LAYER), _invert(_ATTN), _invert(_MLP)
    if parts[0] in layer:
        return ".".join([layer[parts[0]]] + parts[1:])
    if parts[0] == "self_attn":
        if parts[1] == "indexer":
            return "attn." + ".".join(parts[1:])
        return ".".join(["attn", attn.get(parts[1], parts[1])] + parts[2:])
    if parts[0] == "mlp":
        tail = parts[1:]
        if tail[0] in mlp:
            return ".".join(["ffn", mlp[tail[0]]] + tail[1:])
        if tail[0] == "gate":
            return "ffn.gate.bias" if tail[1] == "e_score_correction_bias" else "ffn.gate." + ".".join(tail[1:])
        if tail[0] == "shared_experts":
            return ".".join(["ffn.shared_experts", mlp[tail[1]]] + tail[2:])
        if tail[0] == "experts":
            return ".".join(["ffn.experts", tail[1], mlp[tail[2]]] + tail[3:])
    return rest


@dataclass(frozen=True)
class V3Names:
    """The V3 / V3.2 name mapping for a model with `num_hidden_layers` main layers (MTP layers follow them)."""

    num_hidden_layers: int

    def ignored(self, key: str) -> bool:
        """On-disk keys that duplicate another tensor (the MTP layers' copies of the embedding and head)."""
        m = re.match(r"^model\.layers\.(\d+)\.(embed_tokens\.weight|shared_head\.head\.weight)$", key)
        return m is not None and int(m.group(1)) >= self.num_hidden_layers

    def disk_to_ours(self, key: str) -> str:
        if key == "lm_head.weight":
            return "head.weight"
        if key == "model.embed_tokens.weight":
            return "embed.weight"
        if key == "model.norm.weight":
            return "norm.weight"
        m = re.match(r"^model\.layers\.(\d+)\.(.+)$", key)
        if not m:
            return key
        i, rest = int(m.group(1)), m.group(2)
        if i < self.num_hidden_layers:
            return f"layers.{i}.{_block_to_ours(rest)}"
        k = i - self.num_hidden_layers
        for ours, disk in _MTP.items():
            if rest.startswith(disk + "."):
                return f"mtp.{k}.{ours}.{rest[len(disk) + 1:]}"
        return f"mtp.{k}.block.{_block_to_ours(rest)}"

    def ours_to_disk(self, key: str) -> str:
        if key == "head.weight":
            return "lm_head.weight"
        if key in ("embed.weight", "norm.weight"):
            return "model.embed_tokens.weight" if key == "embed.weight" else "model.norm.weight"
        m = re.match(r"^layers\.(\d+)\.(.+)$", key)
        if m:
            return f"model.layers.{m.group(1)}.{_block_to_disk(m.group(2))}"
        m = re.match(r"^mtp\.(\d+)\.(.+)$", key)
        if m:
            i, rest = self.num_hidden_layers + int(m.group(1)), m.group(2)
            if rest.startswith("block."):
                return f"model.layers.{i}.{_block_to_disk(rest.removeprefix('block.'))}"
            head, _, tail = rest.partition(".")
            return f"model.layers.{i}.{_MTP[head]}.{tail}"
        return key

    def mtp_copies(self, num_mtp: int) -> dict[str, str]:
        """On-disk duplicates DeepSeek writes per MTP layer -> the key of ours they copy."""
        out = {}
        for k in range(num_mtp):
            i = self.num_hidden_layers + k
            out[f"model.layers.{i}.embed_tokens.weight"] = "embed.weight"
            out[f"model.layers.{i}.shared_head.head.weight"] = "head.weight"
        return out
