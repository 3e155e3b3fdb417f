"""The diffusers-free sampling path of the CLI samples exactly as the diffusers pipelines: `EulerFlowScheduler` against
diffusers' `FlowMatchEulerDiscreteScheduler`, `draw_noise` against `randn_tensor`, and the scheduler a folder loads."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from multimodal.pipelines.core import PipelineCore
from multimodal.pipelines.scheduler import EulerFlowScheduler, load_scheduler
from multimodal.pipelines.visual_generation import draw_noise, set_scheduler_timesteps

CONFIGS = [
    {},                                                                    # the shipped model's (diffusers defaults)
    {"shift": 3.0},
    {"shift": 1.7, "num_train_timesteps": 500},
    {"use_dynamic_shifting": True},
    {"use_dynamic_shifting": True, "base_shift": 0.3, "max_shift": 2.0, "base_image_seq_len": 16,
     "max_image_seq_len": 1024},
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("steps", [1, 2, 7, 28, 50])
def test_timesteps_and_sigmas_are_diffusers_bit_for_bit(config, steps):
    ours, theirs = EulerFlowScheduler(**config), FlowMatchEulerDiscreteScheduler(**config)
    for image_seq_len in (64, 300, 4096):
        a = set_scheduler_timesteps(ours, steps, torch.device("cpu"), image_seq_len)
        b = set_scheduler_timesteps(theirs, steps, torch.device("cpu"), image_seq_len)
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
        assert torch.equal(ours.sigmas, theirs.sigmas)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[1], CONFIGS[3]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_steps_are_diffusers_bit_for_bit(config, dtype):
    """A whole 9-step trajectory with a velocity that depends on x and t, in the model's dtype."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 1, 3, 5, generator=g).to(dtype)
    w = torch.randn(4, 4, generator=g)
    trajectories = []
    for scheduler in (EulerFlowScheduler(**config), FlowMatchEulerDiscreteScheduler(**config)):
        timesteps = set_scheduler_timesteps(scheduler, 9, torch.device("cpu"), 15)
        scheduler.set_begin_index(0)
        x, path = x0, []
        for t in timesteps:
            v = (torch.einsum("bcthw,dc->bdthw", x.float(), w) * (t / 1000) - x.float()).to(dtype)
            x = scheduler.step(v, t, x, return_dict=False)[0]
            path.append(x)
        trajectories.append(path)
    for a, b in zip(*trajectories):
        assert a.dtype == b.dtype == dtype and torch.equal(a, b)


def test_without_a_begin_index_the_step_finds_its_timestep():
    ours, theirs = EulerFlowScheduler(shift=3.0), FlowMatchEulerDiscreteScheduler(shift=3.0)
    x, v = torch.randn(1, 2, 1, 2, 2), torch.randn(1, 2, 1, 2, 2)
    for s in (ours, theirs):
        s.set_timesteps(5)
    assert torch.equal(ours.step(v, ours.timesteps[0], x)[0], theirs.step(v, theirs.timesteps[0], x, return_dict=False)[0])


@pytest.mark.parametrize("option, value", [("use_karras_sigmas", True), ("use_beta_sigmas", True),
                                           ("invert_sigmas", True), ("stochastic_sampling", True),
                                           ("shift_terminal", 0.1), ("time_shift_type", "linear"),
                                           ("some_future_option", 1)])
def test_other_configurations_are_left_to_diffusers(tmp_path, option, value):
    config = json.loads(FlowMatchEulerDiscreteScheduler().to_json_string())
    assert EulerFlowScheduler.reproduces("FlowMatchEulerDiscreteScheduler", config)
    assert not EulerFlowScheduler.reproduces("FlowMatchHeunDiscreteScheduler", config)
    config[option] = value
    assert not EulerFlowScheduler.reproduces("FlowMatchEulerDiscreteScheduler", config)
    config.pop("some_future_option", None)
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    loaded = load_scheduler(tmp_path, "diffusers", "FlowMatchEulerDiscreteScheduler", light=True)
    assert type(loaded) is (FlowMatchEulerDiscreteScheduler if option != "some_future_option" else EulerFlowScheduler)


def test_a_folder_loads_the_light_scheduler_only_for_the_cli(pipe, tmp_path):
    saved = pipe.save_pretrained(tmp_path / "pipe")
    assert isinstance(PipelineCore.from_pretrained(saved).scheduler, EulerFlowScheduler)
    assert isinstance(type(pipe).from_pretrained(saved).scheduler, FlowMatchEulerDiscreteScheduler)
    with pytest.raises(FileNotFoundError, match="not a diffusers scheduler"):
        load_scheduler(saved / "scheduler", "my_package", "MyScheduler", light=True)


@pytest.mark.parametrize("generator", ["none", "one", "list1", "list3"])
def test_draw_noise_is_randn_tensor(generator):
    shape = (3, 4, 1, 5, 6)

    def make():
        torch.manual_seed(7)
        return {"none": None, "one": torch.Generator().manual_seed(1), "list1": [torch.Generator().manual_seed(2)],
                "list3": [torch.Generator().manual_seed(s) for s in (3, 4, 5)]}[generator]

    for dtype in (torch.float32, torch.bfloat16):
        a = draw_noise(shape, make(), torch.device("cpu"), dtype)
        b = randn_tensor(shape, generator=make(), device=torch.device("cpu"), dtype=dtype)
        assert a.dtype == dtype and torch.equal(a, b)
