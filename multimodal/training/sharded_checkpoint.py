"""Sharded training checkpoints with `torch.distributed.checkpoint` (DCP), and single-file exports for the pipelines.

A checkpoint folder written by `save_checkpoint`:

    step_000100/
      .metadata, __0_0.distcp, __1_0.distcp, ...   DCP: every rank writes its own shards of model + optimizer state
      config.json                                  the BackboneConfig (our field names)
      state.json                                   step, data position and anything else JSON the trainer adds

DCP records the global shape and the offsets of every shard, so a checkpoint saved on N ranks loads on M ranks with
any FSDP / expert-parallel layout, or in a single process without a process group (`load_checkpoint` reshards on
read). The folder is first written as `.tmp-<name>` next to it and renamed when every rank has finished, so a crash
mid-save never leaves a folder that looks complete (the trainer's `list_checkpoints` ignores `.tmp-*`).

`export_consolidated` (collective, from a live sharded model) and `consolidate_checkpoint` (offline, one process)
write `config.json` + `model.safetensors` in the layout `convert.checkpoint.load_pretrained` and the pipelines read.
`load_sharded_pretrained` goes the other way for inference: every rank builds the model on the meta device, keeps
only its slice of the routed experts, and reads only those tensors from the safetensors files.

Note: DCP's `.metadata` file is a pickle written by torch; load only checkpoints your own runs wrote. Files handed
to us by users are read through safetensors only (`consolidate` output, `load_sharded_pretrained`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.tensor import DTensor

from ..backbone.transformer import Transformer
from ..config import BackboneConfig
from ..convert.checkpoint import CheckpointError, _cast, _shard_files, block_scales, save_pretrained
from ..convert.fp8 import dequantize_blockwise
from ..convert.names import disk_to_ours, expert_key
from .distributed import DistributedContext
from .expert_parallel import ExpertParallelExperts, apply_expert_parallel

TRAINER_STATE = "state.json"
TMP_PREFIX = ".tmp-"


def _barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def save_checkpoint(path: str | Path, model: Transformer, optimizer: torch.optim.Optimizer | None,
                    ctx: DistributedContext, trainer_state: dict[str, Any] | None = None) -> Path:
    """Save model (+ optimizer) state sharded as it lives on the ranks. Collective: call on every rank."""
    path = Path(path)
    partial = path.with_name(TMP_PREFIX + path.name)
    if ctx.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier(ctx)
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    dcp.save(state, checkpoint_id=str(partial), no_dist=not ctx.is_distributed)
    _barrier(ctx)
    if ctx.is_main:
        model.config.save(partial / "config.json")
        _write_json(partial / TRAINER_STATE, {"world_size": ctx.world_size, "ep": ctx.ep_size,
                                              **(trainer_state or {})})
        if path.exists():
            shutil.rmtree(path)
        partial.rename(path)
    _barrier(ctx)
    return path


def load_checkpoint(path: str | Path, model: Transformer, optimizer: torch.optim.Optimizer | None,
                    ctx: DistributedContext) -> dict[str, Any]:
    """Load a `save_checkpoint` folder into an already parallelized (or plain) model and optimizer, resharding from
    whatever layout it was saved with. Returns the trainer state (JSON). Collective: call on every rank."""
    path = Path(path)
    if not (path / ".metadata").exists():
        hint = " (the save did not finish)" if path.with_name(TMP_PREFIX + path.name).exists() else ""
        raise CheckpointError(f"{path}: not a distributed checkpoint, no .metadata{hint}")
    saved = BackboneConfig.load(path / "config.json")
    if saved != model.config:
        raise CheckpointError(f"{path}: the checkpoint's config differs from the model's")
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    _match_saved_keys(path, state)
    dcp.load(state, checkpoint_id=str(path), no_dist=not ctx.is_distributed)
    set_model_state_dict(model, state["model"])
    if optimizer is not None:   # not strict: parameters without saved state (see _match_saved_keys) start fresh
        set_optimizer_state_dict(model, optimizer, state["optim"], options=StateDictOptions(strict=False))
    state_file = path / TRAINER_STATE
    return json.loads(state_file.read_text()) if state_file.exists() else {}


def _match_saved_keys(path: Path, state: dict[str, Any]) -> None:
    """Every model tensor must be in the checkpoint (else CheckpointError, naming them). Optimizer state is dropped for
    parameters the checkpoint has none for: those never had a gradient when it was saved (e.g. an indexer that a
    short sequence never reaches), and an optimizer without state for them is exactly what the saving run had."""
    saved = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    missing = sorted(k for k in state["model"] if f"model.{k}" not in saved)
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks model tensors {missing}")
    if "optim" in state:
        per_param = state["optim"]["state"]
        for fqn in [f for f, st in per_param.items() if any(f"optim.state.{f}.{k}" not in saved for k in st)]:
            del per_param[fqn]


# ------------------------------------------------------------------------------------------------------- export
def _plain_model(cfg: BackboneConfig, state: dict[str, torch.Tensor]) -> Transformer:
    """A single-device `Transformer` holding `state` (full tensors)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.load_state_dict(state, assign=True, strict=True)
    model.rotary = nn.ModuleDict(Transformer._rotaries(cfg))
    return model


def export_consolidated(model: Transformer, out_dir: str | Path, ctx: DistributedContext) -> Path | None:
    """Gather the full weights to rank 0 (CPU) and write `config.json` + safetensors there, in the layout
    `load_pretrained` reads. Collective: call on every rank; returns the folder on rank 0, None elsewhere."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    out = None
    if ctx.is_main:
        out = Path(out_dir)
        save_pretrained(_plain_model(model.config, state), out)
    _barrier(ctx)
    return out


def consolidate_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Offline, in one process without a process group: turn a DCP checkpoint saved on any number of ranks into
    `config.json` + safetensors for the pipelines."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / ".metadata").exists():
        raise CheckpointError(f"{checkpoint}: not a distributed checkpoint, no .metadata")
    cfg = BackboneConfig.load(checkpoint / "config.json")
    model = Transformer(cfg)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    model.load_state_dict(state["model"])
    save_pretrained(model, out_dir)
    return Path(out_dir)


# ------------------------------------------------------------------------------------- sharded inference loading
def _read_local(path: Path, owned: dict[str, range], dtype: torch.dtype, names: Any = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint folder under our names; expert tensors only for the experts this rank owns,
    stacked per layer. `owned` maps 'layers.{i}.ffn.experts' -> the global expert ids of this rank. `names`: an object
    with `disk_to_ours(key)` and `ignored(key)` for another naming scheme (None: the V4 layout of `convert.names`).
    FP8 weights are dequantised with their block scales; only tensors that are such scales are skipped."""
    to_ours = names.disk_to_ours if names is not None else disk_to_ours
    where: dict[str, Path] = {}
    kinds: dict[str, str] = {}
    for f in _shard_files(path):
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                where[key] = f
                kinds[key] = handle.get_slice(key).get_dtype()
    scales = block_scales(path, [k for k, kind in kinds.items() if kind.startswith("F8")], where)
    companions = set(scales.values())

    def read(key: str, rows: range | None = None) -> torch.Tensor:
        with safe_open(str(where[key]), framework="pt") as handle:
            t = handle.get_slice(key)[rows.start:rows.stop] if rows is not None else handle.get_tensor(key)
        if key in scales:
            scale = read(scales[key])
            if rows is not None:                                 # stacked [E, ...] FP8 experts: their scale rows
                scale = scale[rows.start:rows.stop]
            t = dequantize_blockwise(t, scale, dtype=dtype)
        return t

    raw: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key in where:
        if key in companions or (names is not None and names.ignored(key)):
            continue
        name = to_ours(key)
        ek = expert_key(name)
        if ek is not None:
            if ek[0] in owned and ek[1] not in owned[ek[0]]:
                continue                                         # another rank's expert: never read
            experts.setdefault((ek[0], ek[2]), {})[ek[1]] = read(key)
            continue
        prefix, _, w = name.rpartition(".")
        if prefix in owned and w in ("w1", "w2", "w3"):          # stacked [E, ...] on disk: read our rows only
            raw[name] = read(key, owned[prefix])
        else:
            raw[name] = read(key)
    for (prefix, w), per_expert in experts.items():
        ids = owned.get(prefix, range(max(per_expert) + 1))
        missing = [e for e in ids if e not in per_expert]
        if missing:
            raise CheckpointError(f"{path}: {prefix}.{{e}}.{w}.weight missing for experts {missing}")
        raw[f"{prefix}.{w}"] = torch.stack([per_expert[e] for e in ids])
    return raw


def load_sharded_pretrained(path: str | Path, ctx: DistributedContext, dtype: torch.dtype = torch.float32) -> Transformer:
    """Load a `config.json` + safetensors folder for inference with the routed experts spread over the `ep` ranks of
    `ctx` (each device holds 1/ep of every MoE layer's experts, the rest of the weights in full). Every rank must
    call it, and later call the model with the same inputs: the expert layers exchange tokens with all-to-all."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path}: no config.json")
    from ..convert.hf_config import from_hf_config

    hf = json.loads(cfg_file.read_text())
    cfg = from_hf_config(hf) if "model_type" in hf else BackboneConfig.from_dict(hf)
    with torch.device("meta"):
        model = Transformer(cfg)
    apply_expert_parallel(model, ctx.submesh("ep"))
    owned = {name: range(m.first_local_expert, m.first_local_expert + m.num_local)
             for name, m in model.named_modules() if isinstance(m, ExpertParallelExperts)}
    tensors = _read_local(path, owned, dtype)
    if not any(k.startswith("mtp.") for k in tensors) and cfg.num_nextn_predict_layers:
        raise CheckpointError(f"{path}: config has MTP layers but the checkpoint ships no mtp.* weights")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: checkpoint does not fit the config: missing {missing}; unexpected {unexpected}")
    state = {}
    for key, ref in expected.items():
        t = _cast(key, tensors[key], dtype).to(ctx.device)
        if isinstance(ref, DTensor):
            if t.shape != ref.to_local().shape:
                raise CheckpointError(f"{path}: {key} local shard {tuple(t.shape)} != {tuple(ref.to_local().shape)}")
            t = DTensor.from_local(t, ref.device_mesh, ref.placements, run_check=False)
        elif t.shape != ref.shape:
            raise CheckpointError(f"{path}: {key} shape {tuple(t.shape)} != {tuple(ref.shape)}")
        state[key] = t
    model.load_state_dict(state, assign=True, strict=True)
    model.rotary = nn.ModuleDict(Transformer._rotaries(cfg)).to(ctx.device)
    return model.eval()
