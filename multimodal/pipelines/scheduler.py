"""The scheduler component: load it from a saved pipeline folder, without diffusers where that changes nothing.

A saved pipeline names a diffusers scheduler (`model_index.json`: `["diffusers", "FlowMatchEulerDiscreteScheduler"]`,
config in `scheduler/scheduler_config.json`). Importing diffusers costs more than sampling an image on a CPU, so
the `multimodal` command (`load_scheduler(..., light=True)`) runs a configuration of diffusers'
`FlowMatchEulerDiscreteScheduler` that `EulerFlowScheduler` reproduces exactly (the plain Euler step with a static
or resolution-dependent shift; the same timesteps, sigmas and steps, tested) on this module's `EulerFlowScheduler`,
and any other scheduler through diffusers. The public pipelines always load the diffusers class.

The Euler step of rectified flow: with sigmas s_0 = 1-ish > s_1 > ... > s_n = 0 and the head's velocity v,
`x_{i+1} = x_i + (s_{i+1} - s_i) v(x_i, 1000 s_i)`, computed in float32 and returned in the velocity's dtype.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

DIFFUSERS_EULER = "FlowMatchEulerDiscreteScheduler"
# config keys EulerFlowScheduler follows, and the values it requires of those whose other values it does not implement
_FOLLOWED = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
             "max_image_seq_len")
_REQUIRED = {"invert_sigmas": False, "shift_terminal": None, "use_karras_sigmas": False,
             "use_exponential_sigmas": False, "use_beta_sigmas": False, "time_shift_type": "exponential",
             "stochastic_sampling": False}
_DEFAULTS = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5,
             "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}


class EulerFlowScheduler:
    """Euler sampling of a rectified-flow velocity model, with the scheduler interface the generation loop uses
    (`config`, `set_timesteps`, `timesteps`, `sigmas`, `set_begin_index`, `step(..., return_dict=False)`).

    config: num_train_timesteps N (timestep = N * sigma); shift s (static: sigma -> s sigma / (1 + (s - 1) sigma));
    use_dynamic_shifting with mu passed to `set_timesteps` (sigma -> e^mu / (e^mu + 1/sigma - 1)); base_shift,
    max_shift, base_image_seq_len, max_image_seq_len (read by the loop to compute mu)."""

    order = 1

    def __init__(self, **config: Any) -> None:
        unknown = set(config) - set(_FOLLOWED)
        if unknown:
            raise ValueError(f"EulerFlowScheduler does not take {sorted(unknown)}")
        self.config = {**_DEFAULTS, **config}
        n = self.config["num_train_timesteps"]
        # the training grid's ends: sigma at timestep N and at timestep 1, in float32 and shifted when static
        ends = torch.tensor([float(n), 1.0], dtype=torch.float32) / n
        if not self.config["use_dynamic_shifting"]:
            ends = self._static_shift(ends)
        self.sigma_max, self.sigma_min = ends[0].item(), ends[1].item()
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @classmethod
    def reproduces(cls, class_name: str, config: dict[str, Any]) -> bool:
        """True when diffusers' scheduler `class_name` with `config` (a scheduler_config.json) samples exactly as
        this class does: diffusers' Euler flow scheduler, no options beyond the followed ones."""
        if class_name != DIFFUSERS_EULER:
            return False
        keys = {k for k in config if not k.startswith("_")}
        if keys - set(_FOLLOWED) - set(_REQUIRED):
            return False                                  # an option of a newer diffusers: let diffusers run it
        return all(config.get(k, v) == v for k, v in _REQUIRED.items())

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "EulerFlowScheduler":
        return cls(**{k: v for k, v in config.items() if k in _FOLLOWED})

    def _static_shift(self, sigmas):
        s = self.config["shift"]
        return s * sigmas / (1 + (s - 1) * sigmas)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      mu: float | None = None) -> None:
        """`num_inference_steps` sigmas evenly spaced in timestep from the grid's top to its bottom, shifted, then
        0 appended -> `sigmas` [n + 1] and `timesteps` = N * sigmas[:n] (float32 on `device`)."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        n_train = self.config["num_train_timesteps"]
        sigmas = np.linspace(self.sigma_max * n_train, self.sigma_min * n_train, num_inference_steps) / n_train
        if self.config["use_dynamic_shifting"]:
            if mu is None:
                raise ValueError("this scheduler uses dynamic shifting: pass mu to set_timesteps")
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
        else:
            sigmas = self._static_shift(sigmas)
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)       # [n]
        self.timesteps = sigmas * n_train
        self.sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])         # [n + 1]
        self._step_index = self._begin_index = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
             return_dict: bool = False) -> tuple[torch.Tensor]:
        """One Euler step from `sample` at `timestep` -> (next sample,) in `model_output`'s dtype."""
        if return_dict:
            raise ValueError("EulerFlowScheduler.step returns a tuple (pass return_dict=False)")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else \
                int((self.timesteps - torch.as_tensor(timestep, device=self.timesteps.device)).abs().argmin())
        i = self._step_index
        dt = self.sigmas[i + 1] - self.sigmas[i]
        prev = sample.to(torch.float32) + dt * model_output
        self._step_index += 1
        return (prev.to(model_output.dtype),)


def load_scheduler(folder: str | Path, library: str | None, class_name: str | None, light: bool = False):
    """The scheduler of a saved pipeline (`folder` = its scheduler/ folder; library and class from model_index.json),
    None when it has none. `light=True` returns an `EulerFlowScheduler` when it reproduces the saved one, so diffusers
    is not imported. Anything but a diffusers scheduler is refused (no code is loaded from a folder)."""
    from .core import ModelNotFoundError

    if library is None:
        return None
    folder = Path(folder)
    if light and library == "diffusers":
        config = json.loads((folder / "scheduler_config.json").read_text())
        if EulerFlowScheduler.reproduces(class_name, config):
            return EulerFlowScheduler.from_config(config)
    import diffusers
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    cls = getattr(diffusers, class_name, None) if library == "diffusers" else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ModelNotFoundError(f"{folder.parent}: scheduler {library}.{class_name} is not a diffusers scheduler")
    return cls.from_pretrained(folder)
