"""2 ranks (gloo, spawned here) vs 1 process on the same global batch: same losses, gradients and final weights
within fp32 tolerance, for FSDP2 alone, FSDP2 + expert parallel, and FSDP2 + expert parallel + activation
checkpointing; and 4 ranks on a [dp_mod_ep=2, ep=2] mesh (experts both split and FSDP-sharded).

Tolerances. Losses: 1e-5 absolute (values ~9.6). First-step gradients: per tensor, max |diff| <= 1e-4 * max |g| + 5e-8
(summation order differs between one batch of 4 and two of 2; this is the strict check, and the only one that would
catch a wrong gradient scale, which Adam's update is blind to). Final weights after 3 AdamW steps of lr 3e-3:
3e-4 absolute, a tenth of one step: Adam divides each gradient element by its own magnitude, so elements whose
gradient is ~0 (a few in the mHC weights) turn rounding noise into up to an lr-sized difference.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from multimodal.backbone.moe import grouped_experts

from .distributed_cases import (DISPATCH_TOKENS, dispatch_inputs, dispatch_weights, reference, spawn_ranks,
                                train_worker)

STEPS = 3
SCENARIOS = [{"name": "fsdp", "ep": 1}, {"name": "fsdp_ep", "ep": 2}, {"name": "fsdp_ep_ac", "ep": 2, "ac": True}]
LOSS_TOL, GRAD_RTOL, GRAD_ATOL, WEIGHT_TOL = 1e-5, 1e-4, 5e-8, 3e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_train")
    spawn_ranks(train_worker, 2, (str(out), SCENARIOS, STEPS))
    ref_losses, ref_state, ref_grads = reference(STEPS)
    return out, ref_losses, ref_state, ref_grads


@pytest.fixture(scope="module")
def runs_four(tmp_path_factory, runs):
    """4 ranks, mesh [dp_mod_ep=2, ep=2]: experts split 2 ways and FSDP-sharded over the other 2 (1 sample/rank)."""
    out = tmp_path_factory.mktemp("dist_train4")
    spawn_ranks(train_worker, 4, (str(out), [{"name": "fsdp_ep2_dp2", "ep": 2}], STEPS))
    return (out,) + runs[1:]


@pytest.mark.parametrize("name", [s["name"] for s in SCENARIOS])
def test_two_ranks_match_one_process(runs, name):
    check_against_reference(runs, name)


def test_four_ranks_with_replicated_expert_groups_match_one_process(runs_four):
    check_against_reference(runs_four, "fsdp_ep2_dp2")
    local = json.loads((runs_four[0] / "fsdp_ep2_dp2" / "result.json").read_text())["local_shapes"]
    assert local["layers.1.ffn.experts.w1"][0] == 1          # 4 experts / ep 2 / FSDP over dp_mod_ep 2


def check_against_reference(runs, name: str) -> None:
    out, ref_losses, ref_state, ref_grads = runs
    result = json.loads((out / name / "result.json").read_text())
    state = load_file(str(out / name / "weights.safetensors"))
    assert len(result["losses"]) == STEPS
    loss_err = max(abs(a - b) for a, b in zip(result["losses"], ref_losses))
    assert loss_err < LOSS_TOL, (result["losses"], ref_losses)
    grads = load_file(str(out / name / "grads.safetensors"))
    assert set(grads) == set(ref_grads)
    grad_err = 0.0
    for k, g in ref_grads.items():
        err = (grads[k].double() - g.double()).abs().max().item()
        assert err <= GRAD_RTOL * g.abs().max().item() + GRAD_ATOL, (k, err, g.abs().max().item())
        grad_err = max(grad_err, err / (g.abs().max().item() + 1e-30))
    assert set(state) == set(ref_state)
    weight_err = max((state[k].double() - ref_state[k].double()).abs().max().item() for k in ref_state)
    assert weight_err < WEIGHT_TOL, weight_err
    # the weights did move (the comparison is not trivially true)
    init = reference(0)[1]
    moved = max((ref_state[k].double() - init[k].double()).abs().max().item() for k in ref_state)
    assert moved > 10 * WEIGHT_TOL
    print(f"{name}: max |loss diff| {loss_err:.2e}, max relative grad diff {grad_err:.2e}, "
          f"max |weight diff| {weight_err:.2e}, {result['seconds']:.2f}s for {STEPS} steps")


def test_parameters_are_sharded(runs):
    out, _, ref_state, _ = runs
    for name, ep in (("fsdp", 1), ("fsdp_ep", 2)):
        local = json.loads((out / name / "result.json").read_text())["local_shapes"]
        w1 = "layers.1.ffn.experts.w1"
        assert local[w1][0] == ref_state[w1].shape[0] // 2                    # half the experts per rank
        emb = local["embed.weight"]
        assert emb[0] == ref_state["embed.weight"].shape[0] // 2              # FSDP shard of a dense weight


@pytest.mark.parametrize("case", ["skewed", "random"])
def test_expert_dispatch_matches_one_device(runs, case):
    """All-to-all dispatch/combine on 2 ranks with uneven token counts (3 and 5), including a routing that sends no
    token to rank 1's experts, equals `grouped_experts` on all 8 tokens: outputs and every gradient."""
    out = runs[0]
    got = load_file(str(out / "dispatch.safetensors"))
    assert int(got[f"{case}.local_experts"]) == 2
    w1, w3, w2 = (w.clone().requires_grad_(True) for w in dispatch_weights())
    inputs = [dispatch_inputs(case, r) for r in sorted(DISPATCH_TOKENS)]
    x = torch.cat([i["x"] for i in inputs]).requires_grad_(True)
    weights = torch.cat([i["weights"] for i in inputs]).requires_grad_(True)
    y = grouped_experts(x, w1, w3, w2, torch.cat([i["indices"] for i in inputs]), weights, 10.0)
    (y * torch.cat([i["upstream"] for i in inputs])).sum().backward()
    split = list(DISPATCH_TOKENS.values())
    for key, ref in (("y", y.detach()), ("x_grad", x.grad), ("w_grad", weights.grad)):
        for r, part in enumerate(ref.split(split)):
            torch.testing.assert_close(got[f"{case}.{key}.{r}"], part, rtol=1e-5, atol=1e-5)
    for name, w in (("w1", w1), ("w2", w2), ("w3", w3)):
        torch.testing.assert_close(got[f"{case}.{name}_grad"], w.grad, rtol=1e-5, atol=1e-5)
    if case == "skewed":                      # rank 1's experts received nothing: zero gradient, not missing
        assert got["skewed.w1_grad"][2:].abs().max() == 0
