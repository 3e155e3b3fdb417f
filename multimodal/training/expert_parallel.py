"""Expert parallelism: each rank of the `ep` mesh dimension owns a contiguous slice of every MoE layer's routed experts.

The routed experts of one layer are stacked tensors w1, w3 [E, I, dim] and w2 [E, dim, I]. `ExpertParallelExperts`
keeps them as DTensors sharded on dim 0 over the `ep` ranks, so rank r holds experts [r*E/ep, (r+1)*E/ep) and a
distributed checkpoint still sees the global [E, ...] tensors (and can reshard them to another `ep`).

One forward, with T local tokens and top-k routing (the same arithmetic as `backbone.moe.grouped_experts`):

    1. sort the T*k (token, expert) pairs by expert id        -> rows grouped by owning rank, since ranks own ranges
    2. all-to-all the per-expert counts                       -> how many rows each rank will receive per local expert
    3. all-to-all the rows (dispatch)                         -> rows from every source rank, for my experts
    4. regroup received rows by local expert, run each expert once on its contiguous slice, undo the regrouping
    5. all-to-all the outputs back (combine)                  -> in the sorted order of step 1
    6. weight by the router weights and sum each token's k rows

Steps 3 and 5 use the autograd-aware `torch.distributed.nn.functional.all_to_all_single`, so the backward pass sends
the gradients along the reverse routes. Every local expert runs even with zero rows, which keeps all expert weights
in the autograd graph on every rank (FSDP then reduces the same set of gradients everywhere).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.nn.functional import all_to_all_single
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from ..backbone.moe import Experts, MoE, swiglu


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class ExpertParallelExperts(nn.Module):
    """Drop-in replacement for `backbone.moe.Experts` whose weights are split over an `ep` mesh dimension.

    w1, w3: DTensor [E, I, dim] (local [E/ep, I, dim]); w2: DTensor [E, dim, I] (local [E/ep, dim, I]), Shard(0).
    forward(x [T, dim], indices [T, k], weights [T, k]) -> [T, dim], like `Experts.forward`; every rank of the
    `ep` group must call it (it is a collective).
    """

    def __init__(self, dim: int, num_experts: int, inter: int, limit: float | None, ep_mesh: DeviceMesh,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        ep = ep_mesh.size()
        if num_experts % ep:
            raise ValueError(f"n_routed_experts ({num_experts}) must be divisible by the expert-parallel degree ep={ep}")
        self.ep_mesh = ep_mesh
        self.num_experts, self.ep_size = num_experts, ep
        # Tokens of all `ep` ranks reach these experts, so their gradient sums `ep` ranks' local losses where the
        # other weights see one; data-parallel training sets this to 1/ep (see `distributed.apply_fsdp`).
        self.grad_scale = 1.0
        self.num_local = num_experts // ep
        self.limit = limit
        kw = {"device": device, "dtype": dtype}
        n = self.num_local
        shards = (torch.zeros(n, inter, dim, **kw), torch.zeros(n, dim, inter, **kw), torch.zeros(n, inter, dim, **kw))
        self.w1, self.w2, self.w3 = (nn.Parameter(DTensor.from_local(s, ep_mesh, [Shard(0)], run_check=False))
                                     for s in shards)

    @classmethod
    def from_experts(cls, experts: Experts, ep_mesh: DeviceMesh) -> "ExpertParallelExperts":
        """Split an existing (identical on every rank) `Experts` module: each rank keeps its slice of the weights."""
        e, inter, dim = experts.w1.shape
        w1 = experts.w1
        new = cls(dim, e, inter, experts.limit, ep_mesh, device="meta", dtype=w1.dtype)
        for name in ("w1", "w2", "w3"):
            full = getattr(experts, name).detach()
            setattr(new, name, nn.Parameter(distribute_tensor(full, ep_mesh, [Shard(0)], src_data_rank=None)))
        return new

    @property
    def first_local_expert(self) -> int:
        return self.ep_mesh.get_local_rank() * self.num_local

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        group = self.ep_mesh.get_group()
        ep, n_local = self.ep_size, self.num_local
        t, k = indices.shape
        # 1. sort (token, expert) pairs by expert: rows for rank r are the contiguous block of its experts
        flat = indices.reshape(-1)                                                   # [T*k]
        order = flat.argsort(stable=True)
        tokens = order // k
        xs = x[tokens]                                                               # [T*k, dim]
        send_counts = torch.bincount(flat, minlength=self.num_experts)               # [E] = [ep * n_local]
        # 2. exchange counts: recv_counts[s, j] = rows source rank s sends to my local expert j
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=group)
        recv_counts = recv_counts.view(ep, n_local)
        send_splits = send_counts.view(ep, n_local).sum(dim=1).tolist()
        recv_splits = recv_counts.sum(dim=1).tolist()
        # 3. dispatch
        received = all_to_all_single(xs.new_empty(sum(recv_splits), x.shape[-1]), xs, recv_splits, send_splits,
                                     group=group)                                    # [R, dim]
        # 4. regroup by local expert (received rows are ordered by source rank, then by expert)
        local_ids = torch.arange(n_local, device=x.device).repeat(ep).repeat_interleave(recv_counts.reshape(-1))
        perm = local_ids.argsort(stable=True)
        h = received[perm]                                                           # [R, dim] sorted by expert
        per_expert = recv_counts.sum(dim=0).tolist()                                 # [n_local]
        w1, w2, w3 = _local(self.w1), _local(self.w2), _local(self.w3)
        if self.grad_scale != 1.0:
            w1, w2, w3 = (_ScaleGradient.apply(w, self.grad_scale) for w in (w1, w2, w3))
        outs, start = [], 0
        for j, n in enumerate(per_expert):                                           # zero-row experts still run
            seg = h[start:start + n]
            outs.append(F.linear(swiglu(F.linear(seg, w1[j]), F.linear(seg, w3[j]), self.limit), w2[j]))
            start += n
        y_sorted = torch.cat(outs)                                                   # [R, dim]
        y = torch.empty_like(y_sorted).index_copy(0, perm, y_sorted)                 # back to arrival order
        # 5. combine: rows return to their source rank, in the order of step 1
        back = all_to_all_single(y.new_empty(t * k, y.shape[-1]), y, send_splits, recv_splits, group=group)
        # 6. weight and sum per token
        ys = back * weights.reshape(-1)[order].unsqueeze(-1).to(x.dtype)
        return torch.zeros_like(x).index_add_(0, tokens, ys)

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, ep={self.ep_size}, local=[{self.first_local_expert}, "
                f"{self.first_local_expert + self.num_local})")


def moe_layers(model: nn.Module) -> list[MoE]:
    """Every MoE module of a model (main layers and MTP blocks)."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def apply_expert_parallel(model: nn.Module, ep_mesh: DeviceMesh) -> nn.Module:
    """Replace every MoE layer's `experts` by an `ExpertParallelExperts` holding this rank's slice, in place.

    The model must be identical on every rank (same seed or a broadcast, or loaded from the same checkpoint); on the
    meta device the new weights stay on meta for a later `to_empty` + load. State-dict keys do not change."""
    for moe in moe_layers(model):
        if isinstance(moe.experts, ExpertParallelExperts):
            continue
        if moe.experts.w1.is_meta:
            e, inter, dim = moe.experts.w1.shape
            moe.experts = ExpertParallelExperts(dim, e, inter, moe.experts.limit, ep_mesh, device="meta",
                                                dtype=moe.experts.w1.dtype)
        else:
            moe.experts = ExpertParallelExperts.from_experts(moe.experts, ep_mesh)
    return model


def expert_placement(num_experts: int, ep: int) -> list[range]:
    """Which global expert ids each `ep` rank owns: rank r -> range(r*E/ep, (r+1)*E/ep)."""
    if num_experts % ep:
        raise ValueError(f"n_routed_experts ({num_experts}) must be divisible by the expert-parallel degree ep={ep}")
    n = num_experts // ep
    return [range(r * n, (r + 1) * n) for r in range(ep)]
