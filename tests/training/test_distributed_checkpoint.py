"""Distributed checkpoints: save on 2 ranks (FSDP + expert parallel) -> resume in 1 process, save in 1 process ->
resume on 2 ranks, both continuing exactly like an uninterrupted run; the consolidated safetensors export loads with
`load_pretrained`; expert-parallel inference over 2 ranks gives the single-device logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from .distributed_cases import (GLOBAL_BATCH, NUM_SAMPLES, checkpoint_worker, full_state, make_model, make_optimizer,
                               probe_ids, reference, run_steps, spawn_ranks)
from multimodal.convert.checkpoint import CheckpointError, load_pretrained
from multimodal.training.data_sharding import ShardedSampler
from multimodal.training.distributed import init_distributed
from multimodal.training.sharded_checkpoint import consolidate_checkpoint, load_checkpoint, save_checkpoint

LOSS_TOL, WEIGHT_TOL, LOGIT_TOL = 1e-5, 3e-4, 1e-5


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), set(a) ^ set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_ckpt")
    ctx = init_distributed(env={})
    model = make_model()
    opt = make_optimizer(model)
    sampler = ShardedSampler(NUM_SAMPLES, GLOBAL_BATCH)
    run_steps(model, opt, sampler, 2, ctx)
    after_two = full_state(model)
    save_checkpoint(out / "ckpt_1rank", model, opt, ctx, {"step": 2, "sampler": sampler.state_dict()})
    spawn_ranks(checkpoint_worker, 2, (str(out), str(out / "ckpt_1rank")))
    ref_losses, ref_final, _ = reference(3)
    return out, after_two, ref_losses, ref_final


def test_two_rank_checkpoint_resumes_on_one_rank(runs):
    out, _, ref_losses, ref_final = runs
    ctx = init_distributed(env={})
    model = make_model(seed=123)
    opt = make_optimizer(model)
    state = load_checkpoint(out / "ckpt_2ranks", model, opt, ctx)
    assert state["step"] == 2 and state["world_size"] == 2 and state["ep"] == 2
    sampler = ShardedSampler(NUM_SAMPLES, GLOBAL_BATCH)
    sampler.load_state_dict(state["sampler"])
    loss = run_steps(model, opt, sampler, 1, ctx)[0]
    results = json.loads((out / "checkpoint_results.json").read_text())
    assert abs(loss - ref_losses[2]) < LOSS_TOL, (loss, ref_losses)
    assert abs(results["continued_loss"] - ref_losses[2]) < LOSS_TOL
    assert max_diff(full_state(model), ref_final) < WEIGHT_TOL


def test_one_rank_checkpoint_resumes_on_two_ranks(runs):
    out, _, ref_losses, ref_final = runs
    results = json.loads((out / "checkpoint_results.json").read_text())
    assert abs(results["resumed_loss"] - ref_losses[2]) < LOSS_TOL, (results["resumed_loss"], ref_losses)
    assert max_diff(load_file(str(out / "resumed_from_1rank.safetensors")), ref_final) < WEIGHT_TOL


def test_consolidated_export_loads_for_the_pipelines(runs, tmp_path):
    out, after_two, _, _ = runs
    exported = load_pretrained(out / "export_2ranks")
    assert max_diff(exported.state_dict(), after_two) < WEIGHT_TOL
    offline = load_pretrained(consolidate_checkpoint(out / "ckpt_2ranks", tmp_path / "offline"))
    assert max_diff(offline.state_dict(), exported.state_dict()) == 0.0
    ref = make_model()
    ref.load_state_dict(after_two)
    with torch.no_grad():
        assert (exported(probe_ids()).logits - ref.eval()(probe_ids()).logits).abs().max() < 1e-3


def test_expert_parallel_inference_matches_one_device(runs):
    out, _, _, _ = runs
    results = json.loads((out / "checkpoint_results.json").read_text())
    assert results["local_experts"] == make_model().config.moe.n_routed_experts // 2
    single = load_pretrained(out / "export_2ranks")
    with torch.no_grad():
        expected = single(probe_ids()).logits
    got = load_file(str(out / "ep_inference.safetensors"))["logits"]
    err = (got - expected).abs().max().item()
    print(f"EP inference over 2 ranks vs one device: max |logit diff| {err:.2e}")
    assert err < LOGIT_TOL


def test_incomplete_checkpoint_is_refused(runs, tmp_path):
    (tmp_path / ".tmp-step_9").mkdir()
    with pytest.raises(CheckpointError, match="did not finish"):
        load_checkpoint(tmp_path / "step_9", make_model(), None, init_distributed(env={}))
