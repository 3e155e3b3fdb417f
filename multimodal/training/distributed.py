"""Process-group and device-mesh setup, FSDP2 sharding and activation checkpointing, applied from outside the model.

One launch recipe for every scale: `torchrun` (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) starts one process per device; `init_distributed` joins them into a process group and
builds a 2-D `DeviceMesh`

    mesh [dp_mod_ep, ep]   (world = dp_mod_ep * ep)
      dp  = the whole mesh flattened: FSDP2 shards every non-expert parameter, its gradient and optimizer state
            over all ranks, and each rank reads a different slice of the global batch;
      ep  = expert parallelism: the routed experts of every MoE layer are split over the `ep` ranks of a row, and
            tokens travel to the rank that owns their expert with all-to-all (`expert_parallel.py`);
      dp_mod_ep = the ranks that hold the same experts: FSDP2 shards the expert weights over this dimension.

`parallelize` applies expert parallelism, activation checkpointing and `fully_shard` in that order. Every
collective runs under the process group's timeout, and the rendezvous checks that all ranks were started with the
same world size, so a bad launch fails with a `DistributedError` on every rank instead of hanging.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, Replicate
from torch.utils.checkpoint import checkpoint

from ..backbone.moe import MoE
from ..backbone.transformer import Block, Transformer
from .expert_parallel import apply_expert_parallel


class DistributedError(RuntimeError):
    """A launch that cannot work: unreachable rendezvous, mismatched world sizes, bad parallel degrees, a dead peer."""


@dataclass
class ParallelConfig:
    """How to spread one model over the ranks.

    ep                      expert-parallel degree: routed experts are split over `ep` ranks (must divide the world
                            size and the number of routed experts); 1 = every rank keeps all experts (FSDP-sharded)
    fsdp                    shard parameters / gradients / optimizer state with FSDP2. Training needs it: FSDP is
                            also what averages the gradients over the ranks. Off = non-expert weights replicated
                            and never synchronised, which is only right for inference
    activation_checkpointing recompute each block's activations in the backward pass instead of storing them
    reshard_after_forward   free the gathered parameters after each block's forward (ZeRO-3); off keeps them (ZeRO-2)
    timeout_s               rendezvous and collective timeout: a dead or missing rank becomes an error after this
    """

    ep: int = 1
    fsdp: bool = True
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.ep < 1:
            raise ValueError(f"ep (expert-parallel degree) must be >= 1, got {self.ep}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


@dataclass
class DistributedContext:
    """Where this process sits: rank, world size, its device and the mesh (None when running as one process)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh | None = None

    @property
    def is_distributed(self) -> bool:
        return self.mesh is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ep_size(self) -> int:
        return self.mesh["ep"].size() if self.mesh is not None else 1

    def submesh(self, name: str) -> DeviceMesh:
        """'dp' (all ranks, flattened), 'ep' or 'dp_mod_ep'."""
        if self.mesh is None:
            raise DistributedError(f"no device mesh: this process runs alone, there is no {name!r} dimension")
        if name == "dp":                      # the flattened dimension, kept by the mesh it was flattened from
            return self.mesh["dp_mod_ep", "ep"]._flatten("dp")
        return self.mesh[name]


def local_device(local_rank: int) -> torch.device:
    """The accelerator of this local rank when there is one (CUDA, XPU, MPS, ...), else the CPU."""
    if torch.accelerator.is_available():
        acc = torch.accelerator.current_accelerator()
        count = torch.accelerator.device_count()
        if local_rank >= count:
            raise DistributedError(f"LOCAL_RANK={local_rank} but this machine has only {count} {acc.type} devices; "
                                   f"start at most {count} processes per node (--nproc-per-node)")
        torch.accelerator.set_device_index(local_rank)
        return torch.device(acc.type, local_rank)
    return torch.device("cpu")


def _env_int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError as exc:
        raise DistributedError(f"{name} is not set; launch with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, "
                               f"MASTER_ADDR, MASTER_PORT)") from exc
    except ValueError as exc:
        raise DistributedError(f"{name}={env[name]!r} is not an integer") from exc


def _rendezvous_store(env: Mapping[str, str], rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """Connect to the TCP key-value store at MASTER_ADDR:MASTER_PORT (rank 0 hosts it unless torchrun's agent does)."""
    host, port = env.get("MASTER_ADDR", "127.0.0.1"), _env_int(env, "MASTER_PORT")
    agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    try:
        return dist.TCPStore(host, port, world_size, is_master=rank == 0 and not agent_store, timeout=timeout,
                             wait_for_workers=False)
    except (RuntimeError, OSError) as exc:
        raise DistributedError(f"rank {rank}: cannot reach the rendezvous at {host}:{port} within "
                               f"{timeout.total_seconds():.0f}s ({exc}); check MASTER_ADDR/--master-addr, "
                               f"the port and the firewall") from exc


def _check_world_size(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> None:
    """Every rank publishes the world size it was started with; a rank that sees a different one raises.

    Rank 0 waits for every other rank's entry, the others for rank 0's, so a missing rank (wrong --nnodes, a node
    that never started) is reported after `timeout` by name instead of blocking the process-group setup forever.
    """
    store.set(f"world/{rank}", str(world_size))
    peers = range(1, world_size) if rank == 0 else [0]
    for peer in peers:
        key = f"world/{peer}"
        try:
            store.wait([key], timeout)
        except (RuntimeError, dist.DistStoreError) as exc:
            raise DistributedError(f"rank {rank}: rank {peer} did not join within {timeout.total_seconds():.0f}s; "
                                   f"expected {world_size} ranks (check --nnodes / --nproc-per-node on every "
                                   f"node)") from exc
        theirs = int(store.get(key))
        if rank != 0:
            store.set(f"world_read/{rank}", "1")        # rank 0 may now leave: this rank has what it needs
        if theirs != world_size:
            if rank == 0:   # rank 0 usually hosts the store: wait until the peer has read rank 0's size too, so it
                with contextlib.suppress(RuntimeError, dist.DistStoreError):   # reports the mismatch, not a reset
                    store.wait([f"world_read/{peer}"], min(timeout, timedelta(seconds=30)))
            raise DistributedError(f"mismatched world sizes: rank {rank} was started with WORLD_SIZE={world_size} "
                                   f"but rank {peer} with WORLD_SIZE={theirs}; launch every node with the same "
                                   f"--nnodes and --nproc-per-node")


def build_mesh(world_size: int, ep: int, device_type: str) -> DeviceMesh:
    """The [dp_mod_ep, ep] mesh (its flattened 'dp' dimension comes from `DistributedContext.submesh('dp')`)."""
    if world_size % ep:
        raise DistributedError(f"expert-parallel degree ep={ep} must divide the world size {world_size}")
    return init_device_mesh(device_type, (world_size // ep, ep), mesh_dim_names=("dp_mod_ep", "ep"))


def init_distributed(cfg: ParallelConfig | None = None, env: Mapping[str, str] | None = None) -> DistributedContext:
    """Join the process group described by the launcher's environment; a single process when WORLD_SIZE is unset/1."""
    cfg = cfg or ParallelConfig()
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env or _env_int(env, "WORLD_SIZE") == 1:
        if cfg.ep != 1:
            raise DistributedError(f"ep={cfg.ep} needs {cfg.ep} processes; this run has one (launch with torchrun "
                                   f"--nproc-per-node {cfg.ep})")
        return DistributedContext(0, 1, 0, local_device(0))
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    if not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    if world % cfg.ep:
        raise DistributedError(f"expert-parallel degree ep={cfg.ep} must divide the world size {world}")
    device = local_device(local_rank)
    timeout = timedelta(seconds=cfg.timeout_s)
    store = _rendezvous_store(env, rank, world, timeout)
    # torchrun's agent keeps one store across restarts (--max-restarts): keys of an earlier attempt must not count
    store = dist.PrefixStore(f"multimodal/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    _check_world_size(store, rank, world, timeout)
    backend = "gloo" if device.type == "cpu" else dist.get_default_backend_for_device(device)
    dist.init_process_group(backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=world,
                            timeout=timeout, device_id=device if device.type != "cpu" else None)
    return DistributedContext(rank, world, local_rank, device, build_mesh(world, cfg.ep, device.type))


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def shutdown_after() -> Iterator[None]:
    """Leave the process group (if one was joined inside the block) when the block ends, however it ends."""
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


@contextlib.contextmanager
def distributed_errors() -> Iterator[None]:
    """Turn a bad launch or a lost peer into the CLI's one-line error (non-zero exit) that names this rank.

    A rank that dies closes its sockets: the others fail in their next collective with a `DistError` (or, for a
    rank that is stuck rather than dead, after the process group's timeout)."""
    from ..cli import UserError

    rank = os.environ.get("RANK", "0")
    try:
        yield
    except DistributedError as exc:
        raise UserError(str(exc)) from exc
    except (dist.DistError, RuntimeError) as exc:
        text = str(exc).strip()
        lowered = text.lower()
        if not isinstance(exc, dist.DistError) and not any(
                w in lowered for w in ("gloo", "nccl", "connection", "timed out", "timeout", "peer")):
            raise
        first = text.splitlines()[0] if text else type(exc).__name__
        raise UserError(f"rank {rank}: lost contact with the other ranks ({type(exc).__name__}: {first}); another "
                        f"rank probably failed or was killed: see its own error") from exc


# --------------------------------------------------------------------------------------------------- parallelize
def broadcast_from_rank0(model: nn.Module, ctx: DistributedContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (random init, hash tables) before sharding."""
    if not ctx.is_distributed:
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if isinstance(t, DTensor):
                raise DistributedError("broadcast_from_rank0 must run before parallelize (found a DTensor)")
            dist.broadcast(t.data, src=0)


def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute every block (and MTP block) in the backward pass. The module tree and state-dict keys stay as they are:
    only the instance's `forward` is replaced, so FSDP hooks still fire on the block."""
    blocks = [*model.layers, *(m.block for m in model.mtp)]
    for block in blocks:
        inner = type(block).forward.__get__(block)
        block.forward = functools.partial(checkpoint, inner, use_reentrant=False)


def apply_fsdp(model: Transformer, ctx: DistributedContext, reshard_after_forward: bool = True) -> None:
    """FSDP2 `fully_shard` per block (experts separately over `dp_mod_ep`), then the root over `dp`."""
    dp, dp_mod_ep = ctx.submesh("dp"), ctx.submesh("dp_mod_ep")
    for block in [*model.layers, *(m.block for m in model.mtp)]:
        assert isinstance(block, Block)
        if isinstance(block.ffn, MoE) and ctx.ep_size > 1:
            # tokens of all `ep` ranks reach these experts, so their local gradient is already a sum over `ep`
            # ranks' losses: scale it by 1/ep, and FSDP's mean over `dp_mod_ep` completes the mean over all ranks.
            # (A custom FSDP gradient divide factor would do the same, but needs PREMUL_SUM, which gloo lacks.)
            block.ffn.experts.grad_scale = 1.0 / ctx.ep_size
            fully_shard(block.ffn.experts, mesh=dp_mod_ep, reshard_after_forward=reshard_after_forward)
        fully_shard(block, mesh=dp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp, reshard_after_forward=reshard_after_forward)
    # `mtp_loss` reads the root's embedding and head outside `forward`: let FSDP gather them for it too
    register_fsdp_forward_method(model, "mtp_loss")


def parallelize(model: Transformer, ctx: DistributedContext, cfg: ParallelConfig) -> Transformer:
    """Expert parallelism, activation checkpointing and FSDP2, in place, on a model whose weights are identical on
    every rank (build it with the same seed, or call `broadcast_from_rank0` first). Returns the model."""
    if cfg.ep > 1:
        apply_expert_parallel(model, ctx.submesh("ep"))
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if ctx.is_distributed and cfg.fsdp:
        apply_fsdp(model, ctx, cfg.reshard_after_forward)
    return model


# ------------------------------------------------------------------------------------------ training-step helpers
def all_reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Mean of a tensor over all ranks (for logging the global loss); the tensor itself for one process."""
    if not ctx.is_distributed:
        return value.detach()
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def global_expert_load(model: nn.Module, ctx: DistributedContext) -> dict[str, torch.Tensor]:
    """Each MoE layer's `last_load` [E] summed over all ranks, keyed by module name: the per-expert token counts of the
    global batch, which the aux-loss-free bias update needs so every rank applies the same update."""
    loads = {name: m.last_load.clone() for name, m in model.named_modules()
             if isinstance(m, MoE) and m.last_load is not None}
    if ctx.is_distributed and loads:
        flat = torch.cat(list(loads.values()))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        loads = dict(zip(loads, flat.split([t.numel() for t in loads.values()])))
    return loads


def _replicas(t: DTensor) -> int:
    """How many ranks hold each element of a DTensor (the product of the mesh dimensions it is replicated on)."""
    return math.prod(t.device_mesh.size(i) for i, p in enumerate(t.placements) if isinstance(p, Replicate))


def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float, ctx: DistributedContext) -> torch.Tensor:
    """Clip gradients to a global L2 norm of `max_norm`; returns the norm before clipping.

    Works for plain tensors and for DTensors on different meshes at once (FSDP over `dp`, experts over
    [dp_mod_ep, ep]): each rank sums the squares of its own shards, counting replicated shards once, and one
    all-reduce over the world group gives the global sum."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.zeros((), dtype=torch.float64, device=grads[0].device)
    for g in grads:
        if isinstance(g, DTensor):
            total += g.to_local().double().pow(2).sum() / _replicas(g)
        else:
            total += g.double().pow(2).sum() / ctx.world_size
    if ctx.is_distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    else:
        total *= ctx.world_size
    norm = total.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    with torch.no_grad():
        for g in grads:
            (g.to_local() if isinstance(g, DTensor) else g).mul_(coef.to(g.dtype))
    return norm.float()


def is_fsdp(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)
