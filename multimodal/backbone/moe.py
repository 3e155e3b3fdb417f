"""DeepSeekMoE: fine-grained routed experts plus shared experts (DeepSeek-V2/V3/V4; attention.md §1.7).

Routing (`Router`): scores = f(x W_g^T) with f in {sqrt(softplus), sigmoid, softmax}; a per-expert correction bias
(aux-loss-free balancing) is added for the *choice* of experts only; optionally the experts are split into
`n_group` groups and each token keeps its `topk_group` best groups (group score: sum of its top-2 biased scores,
or the max for softmax scoring). The chosen experts' unbiased scores, normalised if `norm_topk_prob`, times
`routed_scaling_factor`, weight their outputs. V4's first layers route by a frozen token-id table (`tid2eid`)
instead and keep the learned scores as weights (`HashRouter`).

Experts are SwiGLU MLPs; V4 clamps the gate pre-activation to <= limit and the up one to [-limit, limit].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MoEConfig
from ..kernels.dispatch import use_triton
from ..kernels.moe.naive import expert_counts


def score_function(name: str, logits: torch.Tensor) -> torch.Tensor:
    if name == "sqrtsoftplus":
        return F.softplus(logits).sqrt()
    if name == "sigmoid":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


def swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float | None) -> torch.Tensor:
    if limit is not None:
        gate, up = gate.clamp(max=limit), up.clamp(min=-limit, max=limit)
    return F.silu(gate) * up


class MLP(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x). w1, w3 [inter, dim]; w2 [dim, inter]."""

    def __init__(self, dim: int, inter: int, limit: float | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.w1 = nn.Linear(dim, inter, bias=False)
        self.w2 = nn.Linear(inter, dim, bias=False)
        self.w3 = nn.Linear(dim, inter, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(swiglu(self.w1(x), self.w3(x), self.limit))


class Router(nn.Module):
    """weight [E, dim]; bias [E] fp32 buffer (correction bias, never trained by gradient)."""

    def __init__(self, dim: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, dim))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, dim] -> (weights [T, k], indices [T, k], scores [T, E])."""
        cfg = self.cfg
        scores = score_function(cfg.scoring_func, F.linear(x, self.weight))         # [T, E]
        biased = scores + self.bias
        if cfg.n_group > 1:
            grouped = biased.view(x.shape[0], cfg.n_group, -1)                      # [T, G, E/G]
            if cfg.scoring_func == "softmax":
                group_scores = grouped.amax(dim=-1)
            else:
                group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)           # [T, G]
            keep = group_scores.topk(cfg.topk_group, dim=-1).indices
            mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            # experts of dropped groups can never be chosen (-inf, as the V3 reference and transformers do; a 0.0
            # fill would let them win when every kept biased score is negative)
            biased = grouped.masked_fill(~mask.unsqueeze(-1), float("-inf")).flatten(1)
        indices = biased.topk(cfg.num_experts_per_tok, dim=-1, sorted=False).indices
        return self._weights(scores, indices), indices, scores

    def _weights(self, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        weights = scores.gather(1, indices)
        if self.cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.cfg.routed_scaling_factor


class HashRouter(Router):
    """Experts chosen by `tid2eid[token_id]` [vocab, k] (frozen); weights from the learned scores."""

    def __init__(self, dim: int, cfg: MoEConfig, vocab_size: int) -> None:
        super().__init__(dim, cfg)
        del self.bias
        self.register_buffer("tid2eid", torch.randint(0, cfg.n_routed_experts, (vocab_size, cfg.num_experts_per_tok)))

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores = score_function(self.cfg.scoring_func, F.linear(x, self.weight))
        indices = self.tid2eid[token_ids.reshape(-1)].long()
        return self._weights(scores, indices), indices, scores


def _grouped_mm_usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """torch's grouped GEMM: on CUDA for bf16 (forward and backward); on the CPU its forward only (no autograd)."""
    if not hasattr(torch, "_grouped_mm") or any(n * x.element_size() % 16 for n in (w.shape[1], w.shape[2])):
        return False                                   # it needs 16-byte aligned rows
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0)
    return x.device.type == "cpu" and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))


def grouped_experts(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor, indices: torch.Tensor,
                    weights: torch.Tensor, limit: float | None) -> torch.Tensor:
    """Sort (token, expert) pairs by expert, run each expert once on its contiguous slice, scatter back weighted.

    x [T, dim]; w1, w3 [E, I, dim]; w2 [E, dim, I]; indices, weights [T, k] -> [T, dim]
    Uses one grouped GEMM per projection when torch provides it for this device and mode (no per-expert loop, no
    host synchronisation); otherwise loops over the experts that received tokens.
    """
    t, k = indices.shape
    flat = indices.reshape(-1)                                                       # [T*k]
    order = flat.argsort(stable=True)
    tokens = order // k
    xs = x[tokens]                                                                   # [T*k, dim] sorted by expert
    if _grouped_mm_usable(x, w1):
        w1, w3, w2 = (w.to(xs.dtype) for w in (w1, w3, w2))                        # autocast does not cover it
        offs = expert_counts(flat, w1.shape[0]).cumsum(0).to(torch.int32)            # [E] end offsets
        h = swiglu(torch._grouped_mm(xs, w1.transpose(1, 2), offs=offs),
                   torch._grouped_mm(xs, w3.transpose(1, 2), offs=offs), limit)      # [T*k, I]
        ys = torch._grouped_mm(h, w2.transpose(1, 2), offs=offs)                     # [T*k, dim]
    else:
        outs, start = [], 0
        for e, n in enumerate(torch.bincount(flat, minlength=w1.shape[0]).tolist()):
            if n:
                hs = xs[start:start + n]
                outs.append(F.linear(swiglu(F.linear(hs, w1[e]), F.linear(hs, w3[e]), limit), w2[e]))
            start += n
        ys = torch.cat(outs)
    ys = ys * weights.reshape(-1)[order].unsqueeze(-1).to(x.dtype)
    return torch.zeros_like(x).index_add_(0, tokens, ys)


class Experts(nn.Module):
    """Routed experts stored stacked: w1, w3 [E, I, dim]; w2 [E, dim, I] (per-expert `experts.{e}.w*` on disk)."""

    def __init__(self, dim: int, cfg: MoEConfig) -> None:
        super().__init__()
        e, i = cfg.n_routed_experts, cfg.moe_intermediate_size
        self.limit = cfg.swiglu_limit
        self.w1 = nn.Parameter(torch.empty(e, i, dim))
        self.w2 = nn.Parameter(torch.empty(e, dim, i))
        self.w3 = nn.Parameter(torch.empty(e, i, dim))
        for w in (self.w1, self.w2, self.w3):
            nn.init.normal_(w, std=0.02)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if x.shape[0] and use_triton("moe_ffn", x):          # Triton grouped GEMM (CUDA, or forced)
            from ..kernels.moe import moe_ffn
            return moe_ffn(x, self.w1, self.w3, self.w2, indices, weights, self.limit)
        return grouped_experts(x, self.w1, self.w3, self.w2, indices, weights, self.limit)


class MoE(nn.Module):
    """gate (Router or HashRouter) + experts + shared_experts. x [B, S, dim] -> [B, S, dim].

    After each forward, `last_load` [E] holds how many tokens each expert received (for the bias update),
    `last_scores` [T, E] the affinities and `last_indices` [T, k] the chosen experts (for the balance loss).
    """

    def __init__(self, dim: int, cfg: MoEConfig, hashed: bool, vocab_size: int) -> None:
        super().__init__()
        self.hashed = hashed
        self.gate = HashRouter(dim, cfg, vocab_size) if hashed else Router(dim, cfg)
        self.experts = Experts(dim, cfg)
        self.shared_experts = MLP(dim, cfg.moe_intermediate_size * cfg.n_shared_experts, cfg.swiglu_limit) \
            if cfg.n_shared_experts else None
        self.last_load: torch.Tensor | None = None
        self.last_scores: torch.Tensor | None = None
        self.last_indices: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])                                             # [T, dim]
        if self.hashed:
            if token_ids is None:
                raise ValueError("hash-routed MoE layers need token ids (pass input_ids or routing_ids)")
            weights, indices, scores = self.gate(flat, token_ids)
        else:
            weights, indices, scores = self.gate(flat)
        self.last_load = expert_counts(indices.reshape(-1), self.experts.w1.shape[0]).detach()
        self.last_scores = scores
        self.last_indices = indices.detach()
        out = self.experts(flat, indices, weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape)
