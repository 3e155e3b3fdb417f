"""DeepSeek-V4 hybrid attention: one class for its three layer types (report §2.3; attention.md §4.5).

- shared-KV multi-query attention: one `head_dim` vector per token is both key and value;
- low-rank query (`wq_a` -> RMSNorm -> `wq_b`), unweighted RMSNorm per query head, RMSNorm on the KV vector;
- partial RoPE on the last `qk_rope_head_dim` dims; because V = K carries the rotation, the output's rope slice is
  rotated back by the query's position, so each value contributes according to its relative position;
- a learned per-head attention-sink logit joins every softmax (its probability mass is dropped);
- grouped low-rank output projection: heads split into `o_groups`, each projected to `o_lora_rank`, then mixed;
- every layer attends to a sliding window of raw tokens; CSA layers add the top-k compressed entries chosen by the
  lightning indexer, HCA layers add every heavily-compressed entry whose window is complete.

Sliding-window layers use the plain "main" rope (theta `rope_theta`); CSA / HCA layers use the YaRN "compress" rope
(theta `compress_rope_theta`) for queries, keys and compressed entries alike, as the checkpoints do.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AttentionConfig
from ..kernels.dispatch import use_triton
from .cache import LayerState
from .compressor import Compressor
from .context import ForwardContext
from .indexer import Indexer
from .norm import RMSNorm, rms_normalize
from .rope import apply_rope


def window_bias(q_index: torch.Tensor, k_index: torch.Tensor, k_valid: torch.Tensor, window: int | None,
                dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B, 1, S, L]: 0 where key j is visible to query i (j <= i, j > i - window, j not padding)."""
    qi, kj = q_index.view(-1, 1), k_index.view(1, -1)                              # [S, 1], [1, L]
    ok = kj <= qi
    if window is not None:
        ok = ok & (kj > qi - window)
    ok = ok.unsqueeze(0) & k_valid.unsqueeze(1)                                     # [B, S, L]
    bias = torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, float("-inf"))
    return bias.unsqueeze(1)


def sink_attention(q: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor, sink: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """Shared-KV MQA with an attention sink.

    q [B, S, H, D], keys [B, L, D] (also the values), bias [B, 1|H, S, L] additive, sink [H] -> out [B, S, H, D].
    A row with no visible key puts all its mass on the sink and returns 0.
    """
    b, s, h, _ = q.shape
    logits = torch.einsum("bshd,bld->bhsl", q, keys) * scale + bias                 # [B, H, S, L]
    sinks = sink.to(logits.dtype).view(1, h, 1, 1).expand(b, h, s, 1)
    probs = torch.softmax(torch.cat([logits, sinks], dim=-1), dim=-1)[..., :-1]
    return torch.einsum("bhsl,bld->bshd", probs.to(keys.dtype), keys)               # [B, S, H, D]


class GroupedLinear(nn.Module):
    """Block-diagonal projection: x [.., g, in] -> [.., g, out]; weight [g*out, in] (DeepSeek's `wo_a`)."""

    def __init__(self, in_per_group: int, out_per_group: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups * out_per_group, in_per_group))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(self.groups, -1, self.weight.shape[-1])                # [g, out, in]
        return torch.einsum("...gi,goi->...go", x, w)


class V4Attention(nn.Module):
    """One V4 attention layer of type `sliding_attention`, `compressed_sparse_attention` or
    `heavily_compressed_attention`.

    Parameters (DeepSeek names): wq_a [q_lora, dim], q_norm, wq_b [H*D, q_lora], wkv [D, dim], kv_norm,
    wo_a [g*r, H*D/g], wo_b [dim, g*r], attn_sink [H]; CSA adds `compressor` (overlapping) and `indexer`,
    HCA adds `compressor` (rate m').
    """

    def __init__(self, dim: int, cfg: AttentionConfig, layer_type: str, eps: float) -> None:
        super().__init__()
        h, d = cfg.num_attention_heads, cfg.head_dim
        self.layer_type, self.n_heads, self.head_dim, self.eps = layer_type, h, d, eps
        self.window, self.groups = cfg.sliding_window, cfg.o_groups
        self.rope_name = "main" if layer_type == "sliding_attention" else "compress"
        self.scale = d ** -0.5
        self.wq_a = nn.Linear(dim, cfg.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(cfg.q_lora_rank, eps)
        self.wq_b = nn.Linear(cfg.q_lora_rank, h * d, bias=False)
        self.wkv = nn.Linear(dim, d, bias=False)
        self.kv_norm = RMSNorm(d, eps)
        self.wo_a = GroupedLinear(h * d // cfg.o_groups, cfg.o_lora_rank, cfg.o_groups)
        self.wo_b = nn.Linear(cfg.o_groups * cfg.o_lora_rank, dim, bias=False)
        self.attn_sink = nn.Parameter(torch.zeros(h, dtype=torch.float32))
        self.compressor: Compressor | None = None
        self.indexer: Indexer | None = None
        if layer_type == "compressed_sparse_attention":
            self.rate = cfg.compress_rate_csa
            self.compressor = Compressor(dim, d, self.rate, overlap=True, eps=eps)
            self.indexer = Indexer(dim, cfg, eps)
        elif layer_type == "heavily_compressed_attention":
            self.rate = cfg.compress_rate_hca
            self.compressor = Compressor(dim, d, self.rate, overlap=False, eps=eps)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, state: LayerState | None) -> torch.Tensor:
        b, s, _ = x.shape
        cos, sin = ctx.rope[self.rope_name]
        q_res = self.q_norm(self.wq_a(x))                                           # [B, S, q_lora]
        q = self.wq_b(q_res).view(b, s, self.n_heads, self.head_dim)                # [B, S, H, D]
        q = apply_rope(rms_normalize(q, self.eps), cos, sin)
        kv = apply_rope(self.kv_norm(self.wkv(x)), cos, sin)                        # [B, S, D]

        # 1. raw tokens in the sliding window (from the cache, then this call's)
        if state is None:
            keys, k_index, k_valid = kv, ctx.q_index, ctx.valid
        else:
            keys, _, k_index, k_valid = state.window.extend(kv, ctx.q_index, ctx.valid)

        # 2. compressed entries, and for CSA the indexer's choice among them
        entries = top = None
        if self.compressor is not None:
            rotary = ctx.rotary["compress"]
            entries = self.compressor(x, rotary, state.compressor if state else None)   # [B, T, D]
            if self.indexer is not None:
                top = self.indexer(x, q_res, ctx.positions, (cos, sin), rotary, state.indexer if state else None)

        # 3. attention over window + entries: index lists for the sparse kernel, else one additive mask
        if use_triton("sparse_mqa", q):
            from ..kernels.sparse_attention import sparse_mqa
            keys, index = self._index_lists(keys, k_index, k_valid, entries, top, ctx)
            out = sparse_mqa(q, keys, index, self.scale, self.attn_sink)               # [B, S, H, D]
        else:
            keys, bias = self._masked_keys(keys, k_index, k_valid, entries, top, ctx, state is None, q.dtype)
            out = sink_attention(q, keys, bias, self.attn_sink, self.scale)          # [B, S, H, D]
        out = apply_rope(out, cos, -sin)                                            # undo the value's rotation
        out = self.wo_a(out.reshape(b, s, self.groups, -1)).flatten(2)              # [B, S, g*r]
        return self.wo_b(out)

    def _masked_keys(self, keys: torch.Tensor, k_index: torch.Tensor, k_valid: torch.Tensor,
                     entries: torch.Tensor | None, top: torch.Tensor | None, ctx: ForwardContext, stateless: bool,
                     dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys [B, L(+T|k), D] and an additive mask [B, 1, S, L(+T|k)] for `sink_attention`."""
        memo_key = ("window_bias", self.window, k_index.shape[0], stateless)          # same for every V4 layer
        bias = ctx.memo.get(memo_key)
        if bias is None:
            bias = ctx.memo[memo_key] = window_bias(ctx.q_index, k_index, k_valid, self.window, dtype)
        if entries is None:
            return keys, bias
        if top is None:
            entry_bias = self._causal_entry_bias(ctx.positions, entries.shape[1], dtype)
        elif ctx.seq_len == 1:      # decode: gather the chosen entries instead of masking all of them
            entries, entry_bias = self._gather(entries, top)
        else:
            entry_bias = self._selection_bias(top, entries.shape[1])
        return torch.cat([keys, entries], dim=1), torch.cat([bias, entry_bias.to(bias.dtype)], dim=-1)

    def _index_lists(self, keys: torch.Tensor, k_index: torch.Tensor, k_valid: torch.Tensor,
                     entries: torch.Tensor | None, top: torch.Tensor | None,
                     ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """All keys [B, L+T, D] and, per query, the positions it attends [B, S, W + k|T] (-1 = none).

        Keys hold consecutive storage indices, so the window of query i is storage (i - W, i], i.e. key
        positions i - W + 1 - k_index[0] ... i - k_index[0]; entries follow the L raw keys."""
        b, length = keys.shape[0], keys.shape[1]
        pos = ctx.q_index.view(-1, 1) - self.window + 1 + torch.arange(self.window, device=keys.device)  # [S, W]
        pos = pos - k_index[0]
        inside = pos >= 0
        pos = pos.clamp(min=0).unsqueeze(0).expand(b, -1, -1)                          # [B, S, W]
        ok = inside.unsqueeze(0) & torch.gather(k_valid, 1, pos.flatten(1)).view_as(pos)
        index = torch.where(ok, pos, torch.full_like(pos, -1))
        if entries is None:
            return keys, index
        if top is None:      # HCA: every entry whose window ended at or before the query's position
            t = entries.shape[1]
            entry = torch.arange(t, device=keys.device).view(1, 1, -1).expand(b, ctx.seq_len, -1)
            seen = entry < ((ctx.positions + 1) // self.rate).unsqueeze(-1)
            chosen = torch.where(seen, entry + length, torch.full_like(entry, -1))
        else:                # CSA: the indexer's choice
            chosen = torch.where(top >= 0, top + length, top)
        return torch.cat([keys, entries], dim=1), torch.cat([index, chosen], dim=-1)

    def _causal_entry_bias(self, positions: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
        """HCA: query at position p sees entry w iff its window ended at or before p: w < (p + 1) // rate."""
        visible = torch.arange(t, device=positions.device).view(1, 1, -1) < ((positions + 1) // self.rate).unsqueeze(-1)
        bias = torch.zeros(visible.shape, dtype=dtype, device=positions.device).masked_fill_(~visible, float("-inf"))
        return bias.unsqueeze(1)                                                    # [B, 1, S, T]

    @staticmethod
    def _selection_bias(top: torch.Tensor, t: int) -> torch.Tensor:
        """top [B, S, k] (-1 = none) -> [B, 1, S, T]: 0 at the chosen entries, -inf elsewhere."""
        b, s, _ = top.shape
        safe = torch.where(top >= 0, top, torch.full_like(top, t))
        bias = torch.full((b, s, t + 1), float("-inf"), device=top.device)
        bias.scatter_(-1, safe, 0.0)
        return bias[..., :t].unsqueeze(1)

    @staticmethod
    def _gather(entries: torch.Tensor, top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode (S = 1): entries [B, T, D], top [B, 1, k] -> chosen [B, k, D] and their bias [B, 1, 1, k]."""
        idx = top[:, 0].clamp(min=0)                                                # [B, k]
        chosen = torch.gather(entries, 1, idx.unsqueeze(-1).expand(-1, -1, entries.shape[-1]))
        bias = torch.zeros(top.shape, device=top.device).masked_fill_(top < 0, float("-inf"))
        return chosen, bias.unsqueeze(1)
