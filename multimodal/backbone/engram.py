"""Engram conditional memory (Cheng et al. 2026, arXiv 2601.07372; ../shared/reference/mhc_engram.md §4).

Per position t, before the block's attention:

1. Retrieval (§4.1). Token ids go through a canonical-id compression of the vocabulary (`canonical_ids`: NFKC,
   NFD, strip accents, lowercase, collapse whitespace, strip; equal keys share an id). Suffix n-grams of orders
   n = 2..N over the compressed ids (left boundary padded with the compressed `pad_id`) are hashed by K heads per
   order:  mix_n = XOR_{i<n} (x'_{t-i} * m_i)  in wrapping int64 arithmetic, with odd multipliers m_i drawn from
   NumPy's PCG64 seeded `seed + 10007 * layer`, and  z_{n,k} = mix_n mod p_{n,k}  (floor mod) with a distinct prime
   p_{n,k} per (layer, order, head). The (N - 1) K rows, each d_mem / ((N - 1) K) wide, are looked up in one table
   (per-head offsets = exclusive prefix sums of the primes) and concatenated: e_t [d_mem].
2. Fusion (§4.2), with M = hc_mult streams (M = 1 without mHC): one value projection and one key projection per
   stream,  alpha_m = sigmoid(signed_sqrt(RMSNorm(h_m) . RMSNorm(W_K^m e) / sqrt(D))),  u_m = alpha_m W_V e,
   Y_m = SiLU(CausalDepthwiseConv(RMSNorm(u_m))) + u_m  (kernel `kernel_size`, dilation N, zero-initialised),
   h_m <- h_m + Y_m. Padding positions contribute u = 0.

Addresses depend only on token ids, so a batch's rows can be gathered before the forward pass reaches the layer,
from a table that lives elsewhere (e.g. host memory while the model is on a GPU): `lookup`, called by
`Transformer.forward` for every Engram layer up front (`ForwardContext.engram_rows`), hashes and gathers in one op,
`multimodal.kernels.engram_gather` (a fused Triton kernel on CUDA, the PyTorch reference elsewhere). `addresses` and
`fetch` are the same two steps apart, for inspecting the rows. `off = True` forces the gate to
0, which makes Y exactly 0: the block then computes exactly what it computes without Engram.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import BackboneConfig, EngramConfig, is_prime
from .context import ForwardContext
from .norm import RMSNorm, rms_normalize

INT64_MAX = 2 ** 63 - 1


def canonical_ids(token_texts: list[str]) -> torch.Tensor:
    """Vocabulary compression: token texts [V] -> canonical id per token [V] (long), ids in order of first use.

    The key is NFKC -> NFD -> strip accents -> lowercase -> whitespace runs to one space -> strip (a token that is
    only whitespace keeps " "); texts containing U+FFFD (undecodable bytes) keep their raw text as the key."""
    keys: dict[str, int] = {}
    out = []
    for text in token_texts:
        if "\ufffd" in text:
            key = "raw:" + text
        else:
            t = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
            t = "".join(c for c in t if unicodedata.category(c) != "Mn").lower()
            t = " ".join(t.split()) if t.strip() else (" " if t else "")
            key = t.strip() or t
        out.append(keys.setdefault(key, len(keys)))
    return torch.tensor(out, dtype=torch.long)


def engram_primes(cfg: EngramConfig) -> list[list[list[int]]]:
    """primes[l][o][k] for Engram layer slot l, order o (n = o + 2), head k: consecutive primes >= table_size."""
    primes, p = [], cfg.table_size
    for _ in cfg.layers:
        per_layer = []
        for _ in range(cfg.max_ngram - 1):
            heads = []
            for _ in range(cfg.n_heads):
                while not is_prime(p):
                    p += 1
                heads.append(p)
                p += 1
            per_layer.append(heads)
        primes.append(per_layer)
    return primes


def engram_multipliers(cfg: EngramConfig, layer: int, vocab_size: int) -> np.ndarray:
    """Odd int64 multipliers m_0..m_{N-1} = 2r + 1, r ~ U[0, (INT64_MAX // vocab) // 2), RNG seed + 10007 * layer."""
    rng = np.random.default_rng(cfg.seed + 10007 * layer)
    r = rng.integers(0, (INT64_MAX // vocab_size) // 2, size=cfg.max_ngram, dtype=np.int64)
    return 2 * r + 1


def hash_ngrams(ids: torch.Tensor, history: torch.Tensor, multipliers: torch.Tensor,
                primes: torch.Tensor) -> torch.Tensor:
    """Compressed ids [B, S], the N - 1 ids before them [B, N - 1], multipliers [N], primes [N - 1, K]
    -> per-head row indices [B, S, (N - 1) * K] (not yet offset), each in [0, p)."""
    n_max = multipliers.shape[0]
    full = torch.cat([history, ids], dim=1)                                          # [B, N-1+S]
    s = ids.shape[1]
    mix = torch.zeros_like(ids)
    out = []
    for i in range(n_max):
        shifted = full[:, n_max - 1 - i: n_max - 1 - i + s]                          # x'_{t-i}  [B, S]
        mix = torch.bitwise_xor(mix, shifted * multipliers[i])                       # wraps in int64
        if i >= 1:
            out.append(torch.remainder(mix.unsqueeze(-1), primes[i - 1]))            # [B, S, K]
    return torch.cat(out, dim=-1)


@dataclass
class EngramState:
    """Decoding state: the last N - 1 compressed ids [B, N - 1] and the conv input history [B, (k-1)*N, M*D]."""

    ids: torch.Tensor | None = None
    conv: torch.Tensor | None = None

    def reorder(self, beam_idx: torch.Tensor) -> None:
        if self.ids is not None:
            self.ids, self.conv = self.ids[beam_idx], self.conv[beam_idx]


class Engram(nn.Module):
    """table [sum of primes, d_mem / ((N-1)K)], w_v [D, d_mem], w_k [M*D, d_mem], gate norms, conv_norm [M, D],
    conv [M*D, 1, kernel]; buffers: compress [vocab], multipliers [N], primes [N-1, K], offsets [(N-1)K].

    forward: x [B, S, D] (no mHC) or [B, S, M, D] -> same shape.
    """

    def __init__(self, cfg: BackboneConfig, layer: int) -> None:
        super().__init__()
        e = cfg.engram
        if layer not in e.layers:
            raise ValueError(f"layer {layer} is not in engram.layers {e.layers}")
        self.layer, self.n_max, self.kernel = layer, e.max_ngram, e.kernel_size
        self.dim = cfg.hidden_size
        self.streams = cfg.hyper.hc_mult if cfg.hyper.enabled else 1
        n_heads = (e.max_ngram - 1) * e.n_heads
        self.head_dim = e.d_mem // n_heads
        prime_list = engram_primes(e)[e.layers.index(layer)]                         # [N-1][K]
        flat = [p for order in prime_list for p in order]
        self.register_buffer("primes", torch.tensor(prime_list, dtype=torch.long))   # [N-1, K]
        offsets = [sum(flat[:i]) for i in range(len(flat))]                          # exclusive prefix sum
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long))
        self.register_buffer("multipliers", torch.from_numpy(engram_multipliers(e, layer, cfg.vocab_size)))
        self.register_buffer("compress", torch.arange(cfg.vocab_size))               # identity until set
        self.pad_id = e.pad_id
        self.table = nn.Embedding(sum(flat), self.head_dim)
        nn.init.normal_(self.table.weight, std=0.02)
        self.w_v = nn.Linear(e.d_mem, self.dim, bias=False)
        self.w_k = nn.Linear(e.d_mem, self.streams * self.dim, bias=False)
        self.norm_h, self.norm_k = RMSNorm(self.dim, cfg.rms_norm_eps), RMSNorm(self.dim, cfg.rms_norm_eps)
        self.conv_norm = nn.Parameter(torch.ones(self.streams, self.dim))
        channels = self.streams * self.dim
        self.conv = nn.Conv1d(channels, channels, e.kernel_size, groups=channels, dilation=e.max_ngram, bias=False)
        nn.init.zeros_(self.conv.weight)                                             # identity at the start
        self.eps = cfg.rms_norm_eps
        self.off = False

    # ----------------------------------------------------------------------------------------------- retrieval
    def addresses(self, token_ids: torch.Tensor, state: EngramState | None = None) -> torch.Tensor:
        """token_ids [B, S] -> flat table rows [B, S, (N-1)K]. Depends on ids only (never on hidden states)."""
        compress = self.compress.to(token_ids.device)
        ids = compress[token_ids]
        if state is not None and state.ids is not None:
            history = state.ids.to(ids.device)
        else:
            history = compress[torch.full((ids.shape[0], self.n_max - 1), self.pad_id, device=ids.device)]
        idx = hash_ngrams(ids, history, self.multipliers.to(ids.device), self.primes.to(ids.device))
        return idx + self.offsets.to(ids.device)

    def lookup(self, token_ids: torch.Tensor, state: EngramState | None = None,
               device: torch.device | None = None) -> torch.Tensor:
        """token_ids [B, S] -> e [B, S, d_mem] on `device`: `fetch(addresses(...))` as one op on the table's device."""
        from ..kernels.engram import engram_gather                                   # imports Triton: lazily

        where = self.table.weight.device
        compress = self.compress.to(where)
        ids = compress[token_ids.to(where)]                                           # [B, S]
        if state is not None and state.ids is not None:
            history = state.ids.to(where)                                            # [B, N-1]
        else:
            history = compress[torch.full((ids.shape[0], self.n_max - 1), self.pad_id, device=where)]
        e = engram_gather(ids, history, self.multipliers.to(where), self.primes.to(where), self.offsets.to(where),
                          self.table.weight)                                         # [B, S, d_mem]
        return e.to(device, non_blocking=True) if device is not None else e

    def fetch(self, rows: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """Gather rows [B, S, (N-1)K] from the table wherever it lives -> e [B, S, d_mem] on `device`."""
        e = self.table(rows.to(self.table.weight.device)).flatten(-2)                 # [B, S, d_mem]
        return e.to(device, non_blocking=True) if device is not None else e

    # ------------------------------------------------------------------------------------------------- fusion
    def forward(self, x: torch.Tensor, ctx: ForwardContext, state=None) -> torch.Tensor:
        est = self._state(state)
        if ctx.engram_rows is not None and self.layer in ctx.engram_rows:
            e = ctx.engram_rows[self.layer].to(x.dtype)
        else:
            if ctx.routing_ids is None:
                raise ValueError(f"Engram layer {self.layer} needs token ids (pass input_ids or routing_ids)")
            e = self.lookup(ctx.routing_ids, est, x.device).to(x.dtype)
        if est is not None and ctx.routing_ids is not None:
            keep = self.n_max - 1
            new = self.compress.to(ctx.routing_ids.device)[ctx.routing_ids]
            hist = est.ids if est.ids is not None else self.compress[torch.full(
                (new.shape[0], keep), self.pad_id, device=new.device)]
            est.ids = torch.cat([hist, new], dim=1)[:, -keep:]
        h = x if x.dim() == 4 else x.unsqueeze(2)                                    # [B, S, M, D]
        b, s, m, d = h.shape
        v = self.w_v(e)                                                              # [B, S, D]
        k = self.w_k(e).view(b, s, m, d)                                             # [B, S, M, D]
        dot = (self.norm_h(h) * self.norm_k(k)).sum(-1).float() / d ** 0.5           # [B, S, M]
        gate = torch.sigmoid(dot.sign() * dot.abs().clamp(min=1e-6).sqrt())          # signed-sqrt gate in (0, 1)
        if self.off:
            gate = torch.zeros_like(gate)
        u = gate.to(v.dtype).unsqueeze(-1) * v.unsqueeze(2)                          # [B, S, M, D]
        u = u * ctx.valid.to(u.dtype)[:, :, None, None]                              # padding adds nothing
        y = self._conv(rms_normalize(u, self.eps) * self.conv_norm.to(u.dtype), est) + u
        return x + (y if x.dim() == 4 else y.squeeze(2))

    def _conv(self, z: torch.Tensor, state: EngramState | None) -> torch.Tensor:
        """SiLU(causal depthwise dilated conv) over time. z [B, S, M, D] -> [B, S, M, D]."""
        b, s, m, d = z.shape
        flat = z.reshape(b, s, m * d)
        pad = (self.kernel - 1) * self.n_max
        if state is not None and state.conv is not None:
            past = state.conv
        else:
            past = flat.new_zeros(b, pad, m * d)
        full = torch.cat([past, flat], dim=1)                                        # [B, pad + S, M*D]
        if state is not None:
            state.conv = full[:, full.shape[1] - pad:]
        out = self.conv(full.transpose(1, 2)).transpose(1, 2)                         # [B, S, M*D]
        return F.silu(out).view(b, s, m, d)

    @staticmethod
    def _state(state) -> EngramState | None:
        if state is None:
            return None
        if getattr(state, "engram", None) is None:
            state.engram = EngramState()
        return state.engram

    def set_compression(self, compress: torch.Tensor) -> None:
        """Install a vocabulary compression [vocab] (e.g. `canonical_ids(texts)`)."""
        if compress.shape != self.compress.shape:
            raise ValueError(f"compression must have shape {tuple(self.compress.shape)}, got {tuple(compress.shape)}")
        self.compress.copy_(compress.long())
