"""Read and write DeepSeek checkpoint directories: `config.json` + `model.safetensors` or sharded
`model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`, in the names `names.py` describes.

Loading dequantises FP8 block-scaled weights, stacks per-expert tensors, and fails with a `CheckpointError` that
lists every missing and unexpected key. Only safetensors are read: nothing is ever unpickled. Writes are atomic
(each file goes to a temporary name in the target folder and is renamed into place).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..backbone.transformer import Transformer
from ..config import BackboneConfig
from .extensions import apply_extensions, extension_fields
from .fp8 import FP8_DTYPES, dequantize_blockwise
from .hf_config import from_hf_config, to_hf_config
from .names import disk_to_ours, expert_key, ours_to_disk, stacked_key
from .names_v3 import V3Names
from ..io.atomic import atomic_path

_V3_TYPES = ("deepseek_v3", "deepseek_v32")

class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded: missing files, keys, or shapes that do not fit the config."""


def _shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from exc
        files = sorted({path / f for f in weight_map.values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weights found")
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise CheckpointError(f"{path}: shard files listed in the index are missing: {missing}")
    return files


def block_scales(path: Path, fp8_keys, keys) -> dict[str, str]:
    """FP8 weight key -> its block-scale key among `keys` (`<w>_scale_inv`, or DeepSeek's `<base>.scale`).

    Only such companions are scales: a parameter that happens to be named `.scale` (mHC) is a weight."""
    scales = {}
    for key in fp8_keys:
        candidates = (key + "_scale_inv", key.removesuffix(".weight") + ".scale")
        found = [c for c in candidates if c in keys]
        if not found:
            raise CheckpointError(f"{path}: FP8 tensor {key!r} has no block scale ({' or '.join(candidates)})")
        scales[key] = found[0]
    return scales


def read_tensors(path: str | Path, dtype: torch.dtype = torch.float32,
                 names: V3Names | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder under OUR names, FP8 dequantised, experts stacked to [E, ...].

    `names`: the V3 / V3.2 (Hugging Face) naming scheme; None reads the V4 layout (names.py)."""
    path = Path(path)
    to_ours = names.disk_to_ours if names is not None else disk_to_ours
    raw: dict[str, torch.Tensor] = {}
    for f in _shard_files(path):
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                raw[key] = handle.get_tensor(key)
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = defaultdict(dict)
    scales = block_scales(path, [k for k, t in raw.items() if t.dtype in FP8_DTYPES], raw)
    companions = set(scales.values())
    for key, t in raw.items():
        if key in companions or (names is not None and names.ignored(key)):
            continue
        if key in scales:
            t = dequantize_blockwise(t, raw[scales[key]], dtype=dtype)
        name = to_ours(key)
        ek = expert_key(name)
        if ek is not None:
            experts[(ek[0], ek[2])][ek[1]] = t
        else:
            out[name] = t
    for (prefix, w), per_expert in experts.items():
        n = max(per_expert) + 1
        gaps = [e for e in range(n) if e not in per_expert]
        if gaps:
            raise CheckpointError(f"{path}: {prefix}.{{e}}.{w}.weight missing for experts {gaps}")
        out[f"{prefix}.{w}"] = torch.stack([per_expert[e] for e in range(n)])
    return out


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> Transformer:
    """Build our backbone from a DeepSeek checkpoint folder (config.json + safetensors)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path}: no config.json")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file}: invalid JSON ({exc})") from exc
    cfg = apply_extensions(from_hf_config(hf), hf) if "model_type" in hf else BackboneConfig.from_dict(hf)
    names = V3Names(cfg.num_hidden_layers) if hf.get("model_type") in _V3_TYPES else None
    tensors = read_tensors(path, dtype, names)
    if not any(k.startswith("mtp.") for k in tensors) and cfg.num_nextn_predict_layers:
        cfg = cfg.replace(num_nextn_predict_layers=0)      # the checkpoint ships no MTP weights
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    no_indexer = sorted(k for k in missing if ".attn.indexer." in k)
    if no_indexer:
        raise CheckpointError(f"{path}: the config has DSA layers but the checkpoint lacks their lightning-indexer "
                              f"weights: {no_indexer}")
    if missing or unexpected:
        raise CheckpointError(f"{path}: checkpoint does not fit the config: missing keys {missing}; "
                              f"unexpected keys {unexpected}")
    bad = [f"{k}: {tuple(tensors[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if tensors[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch: {bad}")
    state = {k: _cast(k, tensors[k], dtype).to(device) for k in expected}
    model.load_state_dict(state, assign=True)
    model.rotary = torch.nn.ModuleDict(Transformer._rotaries(cfg)).to(device)
    return model.eval()


_FP32_PARTS = ("hc_attn.", "hc_ffn.", "hc_head.", "attn_sink", ".ape", "norm.weight", "gate.bias")


def _cast(key: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floating tensors to `dtype`, except those DeepSeek keeps in fp32 (norms, mHC, sinks, slot and router biases)."""
    if not t.is_floating_point():
        return t
    return t.float() if any(p in key for p in _FP32_PARTS) else t.to(dtype)


def save_pretrained(model: Transformer, path: str | Path, max_shard_bytes: int = 5 * 1024 ** 3) -> None:
    """Write `config.json` (Hugging Face format) and safetensors shards (+ index when more than one)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf = dict(to_hf_config(model.config), **extension_fields(model.config))
    names = V3Names(model.config.num_hidden_layers) if hf["model_type"] in _V3_TYPES else None
    to_disk = names.ours_to_disk if names is not None else ours_to_disk
    disk: dict[str, torch.Tensor] = {}
    state = model.state_dict()
    for key, t in state.items():
        sk = stacked_key(key)
        if sk is not None:
            for e in range(t.shape[0]):
                disk[to_disk(f"{sk[0]}.{e}.{sk[1]}.weight")] = t[e].contiguous()
        else:
            disk[to_disk(key)] = t.contiguous()
    if names is not None:       # DeepSeek's MTP layers carry their own copies of the embedding and head
        for copy, ours in names.mtp_copies(model.config.num_nextn_predict_layers).items():
            disk[copy] = state[ours].clone()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(disk):
        nbytes = disk[key].numel() * disk[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = disk[key]
        size += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for name, shard in zip(names, shards):
        with atomic_path(path / name) as tmp:
            save_file(shard, tmp, metadata={"format": "pt"})
    if n > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in disk.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        with atomic_path(path / "model.safetensors.index.json") as tmp:
            Path(tmp).write_text(json.dumps(index, indent=2))
    with atomic_path(path / "config.json") as tmp:
        Path(tmp).write_text(json.dumps(hf, indent=2) + "\n")
