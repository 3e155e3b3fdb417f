"""What the distributed tests run inside each spawned rank, and the one-process reference they are compared against.

A real `torch.distributed` run: `spawn_ranks` starts `world` processes with the environment torchrun would give them
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, a free MASTER_PORT); each joins a gloo process group through
`init_distributed`. The training step is a minimal one of our own (next-token + MTP cross-entropy, AdamW, global
gradient clipping, aux-loss-free router-bias update on the global expert load), identical in both settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor

from multimodal.backbone.moe import MoE
from multimodal.backbone.transformer import Transformer
from multimodal.config import preset
from multimodal.training.data_sharding import ShardedSampler
from multimodal.training.distributed import (DistributedContext, ParallelConfig, all_reduce_mean, build_mesh,
                                             clip_grad_norm_, global_expert_load, init_distributed, parallelize,
                                             shutdown)

SEQ, GLOBAL_BATCH, NUM_SAMPLES, LR = 12, 4, 16, 3e-3


# --------------------------------------------------------------------------------------------------- the model
def make_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(preset("debug"))
    # The mHC `fn` weights start at zero, and the n residual streams start as copies of one another, so their first
    # gradients are ~1e-8 remainders of cancelling sums: Adam (eps 1e-8) would turn summation-order noise in them
    # into lr-sized steps. A small random start makes them ordinary weights for this comparison.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".fn"):
                p.normal_(std=0.02)
    return model


def dataset(seed: int = 1) -> torch.Tensor:
    """[NUM_SAMPLES, SEQ] token ids."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, preset("debug").vocab_size, (NUM_SAMPLES, SEQ), generator=g)


def make_optimizer(model: Transformer) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Global gradient of every parameter that has one (a collective for DTensors: call on every rank)."""
    return {n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).detach().clone()
            for n, p in model.named_parameters() if p.grad is not None}


def train_step(model: Transformer, opt: torch.optim.Optimizer, ids: torch.Tensor, ctx: DistributedContext,
               grads: dict[str, torch.Tensor] | None = None) -> float:
    """One optimizer step on this rank's slice `ids` [b, S]; returns the loss of the global batch. When `grads` is a
    dict, the unclipped global gradients of this step are stored in it."""
    out = model(ids)
    loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].reshape(-1))
    loss = loss + 0.5 * model.mtp_loss(ids, out.hidden_states)
    loss.backward()
    if grads is not None:
        grads.update(full_grads(model))
    clip_grad_norm_(model.parameters(), 1.0, ctx)
    opt.step()
    opt.zero_grad(set_to_none=True)
    loads = global_expert_load(model, ctx)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, MoE) and not m.hashed and name in loads:
                load = loads[name].float()
                m.gate.bias += m.gate.cfg.bias_update_speed * torch.sign(load.mean() - load)
    return all_reduce_mean(loss, ctx).item()


def run_steps(model: Transformer, opt: torch.optim.Optimizer, sampler: ShardedSampler, steps: int,
              ctx: DistributedContext, first_grads: dict[str, torch.Tensor] | None = None) -> list[float]:
    """`steps` training steps reading this rank's share of the data; the first step's gradients go to `first_grads`."""
    data, batches = dataset(), sampler.local_batches()
    return [train_step(model, opt, data[next(batches)], ctx, first_grads if i == 0 else None) for i in range(steps)]


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Global tensors of every parameter and buffer (a collective for DTensors: call on every rank)."""
    out = {}
    for k, v in model.state_dict().items():
        out[k] = (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone().contiguous()
    return out


def reference(steps: int) -> tuple[list[float], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One process, the global batch, no distributed code path: (losses, final state, first-step gradients)."""
    ctx = init_distributed(env={})
    model = make_model()
    opt = make_optimizer(model)
    grads: dict[str, torch.Tensor] = {}
    losses = run_steps(model, opt, ShardedSampler(NUM_SAMPLES, GLOBAL_BATCH), steps, ctx, grads)
    return losses, full_state(model), grads


# ------------------------------------------------------------------------------------------------ process start
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}


def _entry(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update(rank_env(rank, world, port))
    torch.set_num_threads(1)
    fn(rank, world, *args)
    # The work is done and the process group destroyed. Leave without the interpreter's and C++'s static
    # teardown: now and then a communication thread object destroyed at exit aborts a finished rank
    # ("terminate called without an active exception", SIGABRT) while another rank is still writing its results.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_ranks(fn: Callable[..., None], world: int, args: tuple, timeout_s: float = 240.0) -> None:
    """Run fn(rank, world, *args) in `world` fresh processes; raises if any fails or they exceed the timeout."""
    context = mp.start_processes(_entry, args=(world, free_port(), fn, args), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            raise TimeoutError(f"distributed test ranks still running after {timeout_s}s")


# ------------------------------------------------------------------------------------------------ rank workers
def with_ep(ctx: DistributedContext, ep: int) -> DistributedContext:
    """The same process group seen through a mesh with expert-parallel degree `ep`."""
    return dataclasses.replace(ctx, mesh=build_mesh(ctx.world_size, ep, ctx.device.type))


DISPATCH_TOKENS = {0: 3, 1: 5}           # uneven token counts per rank
DISPATCH_DIM, DISPATCH_E, DISPATCH_I, DISPATCH_K = 8, 4, 6, 2


def dispatch_weights() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w1, w3 [E, I, dim], w2 [E, dim, I] of the expert-dispatch check."""
    g = torch.Generator().manual_seed(11)
    e, i, d = DISPATCH_E, DISPATCH_I, DISPATCH_DIM
    return (torch.randn(e, i, d, generator=g), torch.randn(e, i, d, generator=g), torch.randn(e, d, i, generator=g))


def dispatch_inputs(case: str, rank: int) -> dict[str, torch.Tensor]:
    """x [T, dim], indices [T, k], weights [T, k], upstream gradient [T, dim] of rank `rank` for `case`:
    'skewed' routes every token to experts 0 and 1 (rank 0's: rank 1's experts get no rows), 'random' anywhere."""
    g = torch.Generator().manual_seed(100 * (case == "skewed") + rank)
    t = DISPATCH_TOKENS[rank]
    if case == "skewed":
        indices = torch.stack([torch.randperm(2, generator=g) for _ in range(t)])
    else:
        indices = torch.stack([torch.randperm(DISPATCH_E, generator=g)[:DISPATCH_K] for _ in range(t)])
    return {"x": torch.randn(t, DISPATCH_DIM, generator=g), "indices": indices,
            "weights": torch.rand(t, DISPATCH_K, generator=g), "upstream": torch.randn(t, DISPATCH_DIM, generator=g)}


def dispatch_check(ctx: DistributedContext, out_dir: Path) -> None:
    """Run `ExpertParallelExperts` (ep=2) forward + backward on each rank's own tokens; rank 0 saves what every rank
    got: outputs, input and routing-weight gradients, and the full expert-weight gradients."""
    import torch.distributed as dist

    from multimodal.backbone.moe import Experts
    from multimodal.config import MoEConfig
    from multimodal.training.expert_parallel import ExpertParallelExperts

    ep_ctx = with_ep(ctx, 2)
    cfg = MoEConfig(n_routed_experts=DISPATCH_E, num_experts_per_tok=DISPATCH_K, moe_intermediate_size=DISPATCH_I)
    experts = Experts(DISPATCH_DIM, cfg)
    with torch.no_grad():
        for p, w in zip((experts.w1, experts.w3, experts.w2), dispatch_weights()):
            p.copy_(w)
    module = ExpertParallelExperts.from_experts(experts, ep_ctx.submesh("ep"))
    saved: dict[str, torch.Tensor] = {}
    for case in ("skewed", "random"):
        inp = dispatch_inputs(case, ctx.rank)
        x, w = inp["x"].requires_grad_(True), inp["weights"].requires_grad_(True)
        y = module(x, inp["indices"], w)
        (y * inp["upstream"]).sum().backward()
        mine = {"y": y.detach(), "x_grad": x.grad, "w_grad": w.grad}
        for key, t in mine.items():                          # gather the uneven per-rank tensors on every rank
            parts = [None] * ctx.world_size
            dist.all_gather_object(parts, t.tolist())
            for r, part in enumerate(parts):
                saved[f"{case}.{key}.{r}"] = torch.tensor(part)
        for name in ("w1", "w2", "w3"):
            saved[f"{case}.{name}_grad"] = getattr(module, name).grad.full_tensor().clone()
            getattr(module, name).grad = None
        saved[f"{case}.local_experts"] = torch.tensor(module.w1.to_local().shape[0])
    if ctx.rank == 0:
        save_file(saved, str(out_dir / "dispatch.safetensors"))


def train_worker(rank: int, world: int, out_dir: str, scenarios: list[dict[str, Any]], steps: int) -> None:
    """The expert-dispatch check, then for each scenario {name, ep, ac}: build, parallelize, train `steps` steps,
    write losses and full weights."""
    base = init_distributed(ParallelConfig(timeout_s=60))
    try:
        if world == len(DISPATCH_TOKENS):
            dispatch_check(base, Path(out_dir))
        for sc in scenarios:
            cfg = ParallelConfig(ep=sc["ep"], activation_checkpointing=sc.get("ac", False), timeout_s=60)
            ctx = with_ep(base, cfg.ep)
            model = parallelize(make_model(), ctx, cfg)
            opt = make_optimizer(model)
            sampler = ShardedSampler(NUM_SAMPLES, GLOBAL_BATCH, ctx.rank, ctx.world_size)
            grads: dict[str, torch.Tensor] = {}
            t0 = time.perf_counter()
            losses = run_steps(model, opt, sampler, steps, ctx, grads)
            seconds = time.perf_counter() - t0
            state = full_state(model)
            if rank == 0:
                out = Path(out_dir) / sc["name"]
                out.mkdir(parents=True, exist_ok=True)
                save_file(state, str(out / "weights.safetensors"))
                save_file(grads, str(out / "grads.safetensors"))
                local = {k: list(v.to_local().shape) for k, v in model.state_dict().items() if isinstance(v, DTensor)}
                (out / "result.json").write_text(json.dumps({"losses": losses, "seconds": seconds,
                                                             "local_shapes": local}))
    finally:
        shutdown(base)


def probe_ids() -> torch.Tensor:
    """A fixed [2, SEQ] batch for comparing logits."""
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, preset("debug").vocab_size, (2, SEQ), generator=g)


def checkpoint_worker(rank: int, world: int, out_dir: str, one_rank_ckpt: str) -> None:
    """2 ranks, FSDP + EP=2: (a) train 2 steps, save a DCP checkpoint and a consolidated export, train step 3;
    (b) resume the 1-process checkpoint `one_rank_ckpt` and train step 3; (c) expert-parallel inference of the export."""
    from multimodal.training.sharded_checkpoint import (export_consolidated, load_checkpoint,
                                                        load_sharded_pretrained, save_checkpoint)

    cfg = ParallelConfig(ep=2, timeout_s=60)
    ctx = init_distributed(cfg)
    out = Path(out_dir)
    try:
        results: dict[str, Any] = {}
        # (a) save on 2 ranks
        model = parallelize(make_model(), ctx, cfg)
        opt = make_optimizer(model)
        sampler = ShardedSampler(NUM_SAMPLES, GLOBAL_BATCH, ctx.rank, ctx.world_size)
        run_steps(model, opt, sampler, 2, ctx)
        save_checkpoint(out / "ckpt_2ranks", model, opt, ctx, {"step": 2, "sampler": sampler.state_dict()})
        export_consolidated(model, out / "export_2ranks", ctx)
        results["continued_loss"] = run_steps(model, opt, sampler, 1, ctx)[0]
        # (b) resume a 1-process checkpoint on 2 ranks
        model = parallelize(make_model(seed=123), ctx, cfg)               # different init: the load must overwrite
        opt = make_optimizer(model)
        state = load_checkpoint(one_rank_ckpt, model, opt, ctx)
        sampler = ShardedSampler(NUM_SAMPLES, GLOBAL_BATCH, ctx.rank, ctx.world_size)
        sampler.load_state_dict(state["sampler"])
        results["resumed_loss"] = run_steps(model, opt, sampler, 1, ctx)[0]
        resumed = full_state(model)
        # (c) inference with the experts spread over the two ranks
        infer = load_sharded_pretrained(out / "export_2ranks", ctx)
        with torch.no_grad():
            logits = infer(probe_ids()).logits
        local_experts = infer.layers[1].ffn.experts.w1.to_local().shape[0]
        if rank == 0:
            save_file(resumed, str(out / "resumed_from_1rank.safetensors"))
            save_file({"logits": logits.contiguous()}, str(out / "ep_inference.safetensors"))
            results["local_experts"] = local_experts
            (out / "checkpoint_results.json").write_text(json.dumps(results))
    finally:
        shutdown(ctx)
