"""Training-state checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder `<out>/checkpoints/step_00000042/`:

    model.safetensors       model parameters and buffers (router biases, hash tables), our names
    optimizer.safetensors   per-parameter optimizer state, keys `state.<param index>.<name>`
    rng.safetensors         torch CPU (and CUDA) generator states
    state.json              step, schedule, data position, optimizer param groups, Python/NumPy RNG, metadata

Tensors go to safetensors and everything else to JSON: nothing is ever pickled or unpickled.

Writes are atomic: the folder is written under a temporary name `.tmp-step_...` in the same parent, each file
flushed to disk, and only then renamed to its final name; a `latest` file naming the newest complete checkpoint
is replaced the same way (write a temporary file, then `os.replace`). A run killed at any instant, or a disk that
fills up while writing, leaves every earlier checkpoint untouched; half-written temporary folders are removed by
the next `save` and never read by `load`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
LATEST = "latest"


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (full disk, permissions); earlier checkpoints are intact."""


# ------------------------------------------------------------------------------------------------------- RNG state
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state of every random generator a run uses: (tensors, JSON-able values)."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    values = {"python": [version, list(internal), gauss],
              "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, values


def restore_rng(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, internal, gauss = values["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = values["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ------------------------------------------------------------------------------------------------- optimizer state
def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`optimizer.state_dict()` -> (tensors `state.<i>.<name>`, JSON: param groups and non-tensor state)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------------- file layer
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:                       # some filesystems cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """One safetensors file, flushed to disk. Tensors are moved to CPU and made contiguous; tensors sharing memory
    (tied embeddings) are stored as separate copies, since safetensors refuses aliases."""
    out, seen = {}, set()
    for key, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        ptr = value.untyped_storage().data_ptr() if value.numel() else None
        if ptr in seen:
            value = value.clone()
        seen.add(ptr)
        out[key] = value
    save_file(out, str(path))
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_json(data: dict[str, Any], path: Path) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder named by `root/latest`, else the newest complete checkpoint folder, else None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if (named / "state.json").is_file():
            return named
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(root: str | Path, step: int, model_tensors: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any], state: dict[str, Any], keep: int = 2,
                    writer: Callable[[dict[str, torch.Tensor], Path], None] = write_tensors) -> Path:
    """Write checkpoint `step` atomically under `root`, point `latest` at it, keep the newest `keep` folders.

    `state` is the JSON part (step, schedule, data position, ...); the RNG states are captured here. `writer` writes
    one safetensors file (tests inject failures through it). On any error the temporary folder is removed, earlier
    checkpoints stay as they were, and `CheckpointWriteError` names the folder and the cause.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(TMP_PREFIX + "*"):            # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_dir_name(step)
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    opt_tensors, opt_meta = optimizer_to_flat(optimizer_state)
    rng_tensors, rng_values = capture_rng()
    try:
        tmp.mkdir()
        writer(model_tensors, tmp / "model.safetensors")
        writer(opt_tensors, tmp / "optimizer.safetensors")
        writer(rng_tensors, tmp / "rng.safetensors")
        write_json({**state, "step": step, "optimizer": opt_meta, "rng": rng_values}, tmp / "state.json")
        _fsync_dir(tmp)
        if final.exists():                                   # re-saving the same step (e.g. after a resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = root / f"{TMP_PREFIX}{LATEST}-{os.getpid()}"
        pointer_tmp.write_text(final.name + "\n")
        os.replace(pointer_tmp, root / LATEST)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(f"could not write checkpoint {final} ({exc.__class__.__name__}: {exc}); "
                                   f"earlier checkpoints are intact") from exc
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model tensors, optimizer state dict, JSON state) of one checkpoint folder; RNG states are restored by
    `restore_rng(*rng_of(state, path))` when the caller is ready to continue."""
    path = Path(path)
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {name} is missing")
    state = json.loads((path / "state.json").read_text())
    optimizer = optimizer_from_flat(read_tensors(path / "optimizer.safetensors"), state["optimizer"])
    return read_tensors(path / "model.safetensors"), optimizer, state


def rng_of(state: dict[str, Any], path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The RNG states stored in checkpoint `path` (whose JSON part is `state`)."""
    return read_tensors(Path(path) / "rng.safetensors"), state["rng"]
