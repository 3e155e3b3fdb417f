"""Native Sparse Attention (Yuan et al. 2025, arXiv 2502.11089; ../shared/reference/attention.md §3), layer type
`nsa`, configured by `NSAConfig`.

Each query head h (in GQA group g = h // (H / H_kv)) mixes three branches with sigmoid gates from the input:

    o_t = g_cmp * Attn(q_t, K_cmp, V_cmp) + g_slc * Attn(q_t, K_slc(t), V_slc(t)) + g_win * Attn(q_t, K_win, V_win)

- compressed: keys / values mean-pooled over non-overlapping blocks of `block_size` tokens (the
  fla-org/native-sparse-attention simplification, l = d = l'; the paper's MLP compressor is not used); a query sees
  the blocks that ended at or before it;
- selected: block importance is the compressed branch's attention probability summed over the heads of the GQA
  group, so every head of a group reads the same blocks (§3.1); the first block and the `local_blocks` most recent
  blocks (the query's own included) are always kept, and the best others fill up to `block_count`; the query then
  attends causally to the raw tokens of those blocks;
- sliding window: the last `window_size` tokens.

K / V are shared by the three branches (as the fla implementation; the paper gives each branch its own). Queries
and keys carry the interleaved "main" RoPE on their last `qk_rope_head_dim` dims. With every block selected and only
the selection gate open, or a window covering the sequence and only the window gate open, the layer is exactly full
causal attention (tested). This is the readable reference (dense masks, O(S L) memory), not a kernel.

Cache: every past token's k, v (a `WindowState` without a window; blocks are recomputed from it).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AttentionConfig, NSAConfig
from .attention import window_bias
from .cache import LayerState
from .context import ForwardContext
from .rope import apply_rope


def compress_blocks(k: torch.Tensor, valid: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the valid tokens of each complete block. k [B, L, Hkv, D], valid [B, L] ->
    (blocks [B, L // block, Hkv, D], has_token [B, L // block])."""
    b, l, h, d = k.shape
    n = l // block
    kb = k[:, : n * block].reshape(b, n, block, h, d)
    w = valid[:, : n * block].reshape(b, n, block).to(k.dtype)                      # [B, n, block]
    count = w.sum(-1)                                                                # [B, n]
    mean = (kb * w[..., None, None]).sum(2) / count.clamp(min=1)[..., None, None]
    return mean, count > 0


def select_blocks(importance: torch.Tensor, q_block: torch.Tensor, n_blocks: int, count: int,
                  local: int) -> torch.Tensor:
    """Which blocks each query reads.

    importance [B, Hkv, S, nc] (group-summed probabilities of the nc complete blocks), q_block [S] (the query's
    block), n_blocks (blocks that exist, complete or not) -> bool [B, Hkv, S, n_blocks]: block 0 and blocks
    q_block - local + 1 .. q_block always, then the most important earlier blocks up to `count` in total; never a
    block after the query's own."""
    b, h, s, nc = importance.shape
    j = torch.arange(n_blocks, device=importance.device)
    scores = torch.full((b, h, s, n_blocks), float("-inf"), device=importance.device)
    scores[..., :nc] = importance.float()
    qb = q_block.view(1, 1, -1, 1)
    forced = (j == 0) | ((j <= qb) & (j > qb - local))
    scores = scores.masked_fill(forced, float("inf")).masked_fill(j > qb, float("-inf"))
    k = min(count, n_blocks)
    top = scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]         # [B, Hkv, S, k]
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
    return chosen & (scores > float("-inf"))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA attention. q [B, S, H, D], k / v [B, L, Hkv, D], bias [B, H|1, S, L] -> (out [B, S, H, D], probs
    [B, H, S, L]); a row without visible keys outputs 0 (with finite gradients)."""
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)      # [B, L, H, D]
    logits = torch.einsum("bshd,blhd->bhsl", q, k).float() * scale + bias
    any_visible = torch.isfinite(logits).any(dim=-1, keepdim=True)
    probs = torch.softmax(logits.masked_fill(~any_visible, 0.0), dim=-1) * any_visible
    return torch.einsum("bhsl,blhd->bshd", probs.to(v.dtype), v), probs


class NSA(nn.Module):
    """wq [H*D, dim], wk / wv [Hkv*D, dim], wo [dim, H*D], gate [3H, dim] (+ bias). x [B, S, dim] -> [B, S, dim]."""

    def __init__(self, dim: int, cfg: AttentionConfig, nsa: NSAConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.kv_heads = cfg.num_attention_heads, cfg.head_dim, nsa.num_key_value_heads
        if self.n_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads ({self.n_heads}) must be divisible by nsa.num_key_value_heads "
                             f"({self.kv_heads})")
        self.cfg = nsa
        self.scale = self.head_dim ** -0.5
        self.wq = nn.Linear(dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, self.kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, self.kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, dim, bias=False)
        self.gate = nn.Linear(dim, 3 * self.n_heads, bias=True)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, state: LayerState | None) -> torch.Tensor:
        b, s, _ = x.shape
        h, hk, d, cfg = self.n_heads, self.kv_heads, self.head_dim, self.cfg
        cos, sin = ctx.rope["main"]
        q = apply_rope(self.wq(x).view(b, s, h, d), cos, sin)                        # [B, S, H, D]
        k = apply_rope(self.wk(x).view(b, s, hk, d), cos, sin)                        # [B, S, Hkv, D]
        v = self.wv(x).view(b, s, hk, d)
        if state is None:
            k_index, k_valid = ctx.q_index, ctx.valid
        else:
            kf, vf, k_index, k_valid = state.window.extend(k.flatten(2), ctx.q_index, ctx.valid, extra=v.flatten(2))
            k, v = kf.view(b, -1, hk, d), vf.view(b, -1, hk, d)                      # [B, L, Hkv, D]
        causal = window_bias(ctx.q_index, k_index, k_valid, None, torch.float32)     # [B, 1, S, L]
        l, blk = k.shape[1], cfg.block_size

        # 1. compressed blocks: visible once complete (block j ends at storage index (j + 1) * blk - 1)
        k_cmp, has = compress_blocks(k, k_valid, blk)
        v_cmp, _ = compress_blocks(v, k_valid, blk)
        nc = k_cmp.shape[1]
        done = torch.arange(nc, device=x.device).view(1, -1) < ((ctx.q_index + 1) // blk).view(-1, 1)   # [S, nc]
        cmp_ok = done.unsqueeze(0) & has.unsqueeze(1)                                # [B, S, nc]
        cmp_bias = torch.zeros(cmp_ok.shape, device=x.device).masked_fill(~cmp_ok, float("-inf")).unsqueeze(1)
        o_cmp, p_cmp = masked_attention(q, k_cmp, v_cmp, cmp_bias, self.scale)      # p_cmp [B, H, S, nc]

        # 2. selected blocks, shared by the heads of a GQA group
        importance = p_cmp.view(b, hk, h // hk, s, nc).sum(2)                        # [B, Hkv, S, nc]
        n_blocks = -(-l // blk)
        chosen = select_blocks(importance, ctx.q_index // blk, n_blocks, cfg.block_count, cfg.local_blocks)
        token_block = k_index // blk                                                 # [L]
        picked = chosen.gather(-1, token_block.view(1, 1, 1, -1).expand(b, hk, s, -1))   # [B, Hkv, S, L]
        picked = picked.repeat_interleave(h // hk, dim=1)                            # [B, H, S, L]
        slc_bias = causal.masked_fill(~picked, float("-inf"))
        o_slc, _ = masked_attention(q, k, v, slc_bias, self.scale)

        # 3. sliding window
        win_bias = window_bias(ctx.q_index, k_index, k_valid, cfg.window_size, torch.float32)
        o_win, _ = masked_attention(q, k, v, win_bias, self.scale)

        g = torch.sigmoid(self.gate(x).float()).view(b, s, h, 3).to(q.dtype)        # [B, S, H, 3]
        out = g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_win        # [B, S, H, D]
        return self.wo(out.flatten(2))
