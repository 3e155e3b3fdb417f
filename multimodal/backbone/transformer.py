"""The backbone: embeddings -> blocks (attention + FFN, joined by mHC or plain residuals) -> norm -> LM head.

`Transformer.forward` takes token ids or embeddings (the unified model feeds image / video embeddings), an optional
attention mask [B, S] or [B, past + S] (1 = token, 0 = padding; pad on the left), optional positions, and an
optional `BackboneCache` for incremental decoding: prefill N tokens, then feed one token at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import V4_ATTENTION_TYPES, BackboneConfig
from .attention import V4Attention
from .cache import BackboneCache, LayerState
from .context import ForwardContext
from .dsa import DSA
from .engram import Engram
from .hyper import HyperConnection, HyperHead, hyper_update
from .mla import MLA
from .moe import MLP, MoE
from .mtp import MTPModule
from .nsa import NSA
from .norm import RMSNorm
from .rope import RotaryEmbedding, yarn_mscale


class Block(nn.Module):
    """attn_norm -> attn -> (residual / mHC) -> ffn_norm -> ffn -> (residual / mHC).

    With mHC the input/output is the stream tensor [B, S, n, dim]; otherwise [B, S, dim].
    """

    def __init__(self, cfg: BackboneConfig, layer_type: str, mlp_type: str) -> None:
        super().__init__()
        dim, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.attn_norm, self.ffn_norm = RMSNorm(dim, eps), RMSNorm(dim, eps)
        if layer_type in V4_ATTENTION_TYPES:
            self.attn = V4Attention(dim, cfg.attention, layer_type, eps)
        elif layer_type == "mla":
            self.attn = MLA(dim, cfg.attention, eps)
        elif layer_type == "dsa":
            self.attn = DSA(dim, cfg.attention, eps)
        elif layer_type == "nsa":
            self.attn = NSA(dim, cfg.attention, cfg.nsa)
        else:
            raise NotImplementedError(f"layer type {layer_type!r} is not built by this backbone yet")
        if mlp_type == "dense":
            self.ffn = MLP(dim, cfg.moe.intermediate_size, cfg.moe.swiglu_limit)
        else:
            self.ffn = MoE(dim, cfg.moe, hashed=mlp_type == "hash_moe", vocab_size=cfg.vocab_size)
        self.engram: Engram | None = None        # set by Transformer for the blocks in cfg.engram.layers
        self.mhc = cfg.hyper.enabled
        if self.mhc:
            self.hc_attn = HyperConnection(dim, cfg.hyper, eps)
            self.hc_ffn = HyperConnection(dim, cfg.hyper, eps)

    def _ffn(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.ffn(x, ctx.routing_ids) if isinstance(self.ffn, MoE) else self.ffn(x)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, state: LayerState | None) -> torch.Tensor:
        if self.engram is not None:
            x = self.engram(x, ctx, state)                                          # H <- H + Y, before attention
        if not self.mhc:
            x = x + self.attn(self.attn_norm(x), ctx, state)
            return x + self._ffn(self.ffn_norm(x), ctx)
        post, comb, collapsed = self.hc_attn(x)
        x = hyper_update(self.attn(self.attn_norm(collapsed), ctx, state), x, post, comb)
        post, comb, collapsed = self.hc_ffn(x)
        return hyper_update(self._ffn(self.ffn_norm(collapsed), ctx), x, post, comb)


@dataclass
class TransformerOutput:
    """logits [B, S', vocab] (S' = logits_to_keep or S), hidden_states [B, S, dim] (after the final norm)."""

    logits: torch.Tensor | None
    hidden_states: torch.Tensor
    cache: BackboneCache | None = None


class Transformer(nn.Module):
    """DeepSeek V3 / V3.2 / V4 decoder. Parameter names follow DeepSeek's checkpoints:
    embed, layers.{i}.{attn_norm, attn.*, ffn_norm, ffn.*, hc_attn.*, hc_ffn.*}, hc_head.*, norm, head, mtp.{k}.*
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.config = cfg
        dim = cfg.hidden_size
        self.embed = nn.Embedding(cfg.vocab_size, dim)
        self.layers = nn.ModuleList(Block(cfg, t, m) for t, m in zip(cfg.layer_types, cfg.mlp_layer_types))
        for i in cfg.engram.layers:
            self.layers[i].engram = Engram(cfg, i)
        self.hc_head = HyperHead(dim, cfg.hyper, cfg.rms_norm_eps) if cfg.hyper.enabled else None
        self.norm = RMSNorm(dim, cfg.rms_norm_eps)
        self.head = nn.Linear(dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.head.weight = self.embed.weight
        self.mtp = nn.ModuleList(
            MTPModule(dim, Block(cfg, cfg.layer_types[-1], cfg.mlp_layer_types[-1]),
                      HyperHead(dim, cfg.hyper, cfg.rms_norm_eps) if cfg.hyper.enabled else None, cfg.rms_norm_eps)
            for _ in range(cfg.num_nextn_predict_layers))
        self.rotary = nn.ModuleDict(self._rotaries(cfg))

    @staticmethod
    def _rotaries(cfg: BackboneConfig) -> dict[str, RotaryEmbedding]:
        a, rd = cfg.attention, cfg.attention.qk_rope_head_dim
        rot = {}
        if any(t in ("mla", "dsa") for t in cfg.layer_types):   # (nsa layers use the plain "main" rope below)
            # V3: YaRN on the decoupled key; cos/sin scaled by mscale(f, mscale) / mscale(f, mscale_all_dim) (= 1)
            s = a.rope_scaling
            factor = 1.0
            if s is not None:
                factor = s.attention_factor if s.attention_factor is not None else (
                    yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim)
                    if s.mscale and s.mscale_all_dim else yarn_mscale(s.factor))
            rot["main"] = RotaryEmbedding(rd, a.rope_theta, s, factor)
        else:
            rot["main"] = RotaryEmbedding(rd, a.rope_theta)
        if any(t in ("compressed_sparse_attention", "heavily_compressed_attention") for t in cfg.layer_types):
            s = a.rope_scaling
            factor = s.attention_factor if s is not None and s.attention_factor is not None else 1.0
            rot["compress"] = RotaryEmbedding(rd, a.compress_rope_theta, s, factor)
        return rot

    # ------------------------------------------------------------------------------------------------------ forward
    def make_context(self, batch: int, seq: int, device: torch.device, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None, cache: BackboneCache | None,
                     routing_ids: torch.Tensor | None) -> ForwardContext:
        seen = cache.seen if cache is not None else 0
        q_index = torch.arange(seen, seen + seq, device=device)
        if attention_mask is None:
            valid = torch.ones(batch, seq, dtype=torch.bool, device=device)
        else:
            if attention_mask.shape[0] != batch or attention_mask.shape[-1] not in (seq, seen + seq):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected [{batch}, {seq}] "
                                 f"or [{batch}, {seen + seq}] (past + new tokens)")
            valid = attention_mask[:, -seq:].to(device=device).bool()
        positions = position_ids if position_ids is not None else q_index.unsqueeze(0).expand(batch, -1)
        rope = {name: r(positions) for name, r in self.rotary.items()}
        return ForwardContext(positions=positions, q_index=q_index, valid=valid, rope=rope,
                              rotary=dict(self.rotary.items()), routing_ids=routing_ids)

    def forward(self, input_ids: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: BackboneCache | None = None, routing_ids: torch.Tensor | None = None,
                logits_to_keep: int = 0, return_logits: bool = True) -> TransformerOutput:
        """input_ids [B, S] or inputs_embeds [B, S, dim]; routing_ids [B, S] default to input_ids (hash MoE layers)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        b, s, _ = x.shape
        ctx = self.make_context(b, s, x.device, attention_mask, position_ids, cache,
                                routing_ids if routing_ids is not None else input_ids)
        if cfg_engram_layers := self.config.engram.layers:
            if ctx.routing_ids is None:
                raise ValueError(f"Engram layers {cfg_engram_layers} need token ids (pass input_ids or routing_ids)")
            ctx.engram_rows = self.prefetch_engram(ctx.routing_ids, cache, x.device)
        h = self.run_layers(x, ctx, cache)
        if cache is not None:
            cache.seen += s
        logits = None
        if return_logits:
            logits = self.head(h[:, -logits_to_keep:] if logits_to_keep else h)
        return TransformerOutput(logits=logits, hidden_states=h, cache=cache)

    def run_layers(self, x: torch.Tensor, ctx: ForwardContext, cache: BackboneCache | None) -> torch.Tensor:
        """x [B, S, dim] -> final normed hidden states [B, S, dim]."""
        if self.hc_head is not None:
            x = x.unsqueeze(2).expand(-1, -1, self.config.hyper.hc_mult, -1).contiguous()   # [B, S, n, dim]
        for i, layer in enumerate(self.layers):
            x = layer(x, ctx, cache.layers[i] if cache is not None else None)
        if self.hc_head is not None:
            x = self.hc_head(x)
        return self.norm(x)

    def prefetch_engram(self, token_ids: torch.Tensor, cache: BackboneCache | None,
                        device: torch.device) -> dict[int, torch.Tensor]:
        """Gather every Engram layer's memory rows for `token_ids` [B, S] before the layers run -> {layer: [B, S, d_mem]}.

        Addresses depend only on token ids, so the rows come from wherever each table lives (e.g. host memory while
        the model is on a GPU) and are copied to `device` ahead of the layer that needs them."""
        rows = {}
        for i in self.config.engram.layers:
            engram = self.layers[i].engram
            state = cache.layers[i].engram if cache is not None else None
            rows[i] = engram.lookup(token_ids, state, device)
        return rows

    def new_cache(self) -> BackboneCache:
        return BackboneCache.for_config(self.config)

    # -------------------------------------------------------------------------------------------------------- MTP
    def mtp_loss(self, input_ids: torch.Tensor, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over MTP depths k = 1.. of the cross-entropy of predicting token t + 1 + k at position t.

        input_ids [B, S]; hidden [B, S, dim] from `forward` on the same ids (no cache)."""
        if not len(self.mtp):
            return hidden.new_zeros(())
        b, s = input_ids.shape
        losses, h = [], hidden
        for k, module in enumerate(self.mtp, start=1):
            if s <= k + 1:
                break
            ctx = self.make_context(b, s - k, hidden.device,
                                    attention_mask[:, : s - k] if attention_mask is not None else None,
                                    None, None, input_ids[:, k:])
            h = module(h[:, : s - k], self.embed(input_ids[:, k:]), ctx, self.config.hyper.hc_mult)
            logits = self.head(h[:, :-1])                                           # predicts token t + 1 + k
            target = input_ids[:, k + 1:]
            if attention_mask is not None:
                target = target.masked_fill(attention_mask[:, k + 1:] == 0, -100)
            losses.append(F.cross_entropy(logits.flatten(0, 1).float(), target.reshape(-1), ignore_index=-100))
        return torch.stack(losses).mean() if losses else hidden.new_zeros(())
