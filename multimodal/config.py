"""Dataclass configs for every part of the backbone, composed into one `BackboneConfig`, plus named presets.

Field names follow DeepSeek's (`q_lora_rank`, `o_groups`, `index_topk`, `hc_mult`, `n_routed_experts`, ...) so a
reader can diff them against the papers and the Hugging Face `config.json` files. JSON keys equal field names:
`BackboneConfig.from_dict(cfg.to_dict()) == cfg`.

Layer types (one per layer, `BackboneConfig.layer_types`):

| type                              | attention                                                              |
|-----------------------------------|------------------------------------------------------------------------|
| `sliding_attention`               | V4 shared-KV MQA over the last `sliding_window` tokens                  |
| `compressed_sparse_attention`     | V4 CSA: window + top-k of entries compressed every `compress_rate_csa` |
| `heavily_compressed_attention`    | V4 HCA: window + all entries compressed every `compress_rate_hca`      |
| `mla`                             | V2/V3 multi-head latent attention                                      |
| `dsa`                             | V3.2: MLA over the top-`index_topk` tokens a lightning indexer picks    |
| `nsa`                             | Native Sparse Attention: compressed + selected blocks + window (`NSAConfig`) |

MLP layer types (`BackboneConfig.mlp_layer_types`): `dense` (SwiGLU MLP), `moe` (learned top-k routing),
`hash_moe` (experts chosen by a frozen token-id table, V4's first layers).

Engram conditional memory (`EngramConfig`, arXiv 2601.07372) is added before the attention of the blocks listed
in `engram.layers` (0-indexed; empty = off).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_keys import check, reject_unknown_keys

V4_ATTENTION_TYPES = ("sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention")
ATTENTION_TYPES = V4_ATTENTION_TYPES + ("mla", "dsa", "nsa")
MLP_TYPES = ("dense", "moe", "hash_moe")
SCORING_FUNCS = ("sqrtsoftplus", "sigmoid", "softmax")


@dataclass
class RopeScaling:
    """YaRN parameters (arXiv 2309.00071) as DeepSeek ships them. `attention_factor` scales cos/sin (V4: 1.0)."""

    factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None

    def __post_init__(self) -> None:
        check(self.factor >= 1.0, f"rope_scaling.factor must be >= 1, got {self.factor}")
        check(self.original_max_position_embeddings > 0,
              f"rope_scaling.original_max_position_embeddings must be > 0, got {self.original_max_position_embeddings}")


@dataclass
class AttentionConfig:
    """Attention hyper-parameters shared by all layers (V4 fields first, then MLA's)."""

    num_attention_heads: int = 64
    head_dim: int = 512                      # V4 shared-KV head dim (K = V)
    q_lora_rank: int = 1024                  # 0 = no query compression (V2-Lite MLA)
    qk_rope_head_dim: int = 64               # rotary dims, the LAST dims of each head in V4
    o_groups: int = 8                        # grouped output projection: g groups ...
    o_lora_rank: int = 1024                  # ... each projected to d_g dims
    sliding_window: int = 128
    compress_rate_csa: int = 4               # m
    compress_rate_hca: int = 128             # m'
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    rope_theta: float = 10000.0              # sliding-window layers ("main" rope)
    compress_rope_theta: float = 160000.0    # CSA / HCA layers ("compress" rope, with YaRN)
    rope_scaling: RopeScaling | None = None
    # MLA (V2 / V3 / V3.2)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    v_head_dim: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        for name in ("num_attention_heads", "head_dim", "sliding_window", "compress_rate_csa", "compress_rate_hca",
                     "index_n_heads", "index_head_dim", "o_groups", "o_lora_rank", "kv_lora_rank"):
            check(getattr(self, name) > 0, f"attention.{name} must be > 0, got {getattr(self, name)}")
        check(self.index_topk > 0, f"attention.index_topk must be > 0, got {self.index_topk}")
        check(self.q_lora_rank >= 0, f"attention.q_lora_rank must be >= 0, got {self.q_lora_rank}")
        check(self.num_attention_heads % self.o_groups == 0,
              f"attention.num_attention_heads ({self.num_attention_heads}) must be divisible by "
              f"attention.o_groups ({self.o_groups})")
        check(0 < self.qk_rope_head_dim <= self.head_dim and self.qk_rope_head_dim % 2 == 0,
              f"attention.qk_rope_head_dim ({self.qk_rope_head_dim}) must be even and in (0, head_dim="
              f"{self.head_dim}]")
        check(self.index_head_dim % 2 == 0 and self.qk_rope_head_dim <= self.index_head_dim,
              f"attention.index_head_dim ({self.index_head_dim}) must be even and >= qk_rope_head_dim "
              f"({self.qk_rope_head_dim})")


@dataclass
class MoEConfig:
    """DeepSeekMoE: fine-grained routed experts + shared experts, aux-loss-free balancing."""

    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 6
    moe_intermediate_size: int = 2048
    intermediate_size: int = 0               # width of `dense` MLP layers (V3's first_k_dense_replace layers)
    scoring_func: str = "sqrtsoftplus"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.5
    n_group: int = 1                         # group-limited routing: experts in n_group groups ...
    topk_group: int = 1                      # ... tokens may only use experts of their topk_group best groups
    swiglu_limit: float | None = 10.0        # clamp of gate/up pre-activations (V4); None = no clamp (V3)
    bias_update_speed: float = 0.001         # gamma of the aux-loss-free correction-bias update

    def __post_init__(self) -> None:
        check(self.scoring_func in SCORING_FUNCS,
              f"moe.scoring_func must be one of {SCORING_FUNCS}, got {self.scoring_func!r}")
        check(self.n_routed_experts > 0, f"moe.n_routed_experts must be > 0, got {self.n_routed_experts}")
        check(0 < self.num_experts_per_tok <= self.n_routed_experts,
              f"moe.num_experts_per_tok ({self.num_experts_per_tok}) must be in [1, n_routed_experts="
              f"{self.n_routed_experts}]")
        check(self.n_shared_experts >= 0, f"moe.n_shared_experts must be >= 0, got {self.n_shared_experts}")
        check(self.moe_intermediate_size > 0, f"moe.moe_intermediate_size must be > 0, got {self.moe_intermediate_size}")
        check(self.n_group > 0 and self.n_routed_experts % self.n_group == 0,
              f"moe.n_routed_experts ({self.n_routed_experts}) must be divisible by moe.n_group ({self.n_group})")
        check(0 < self.topk_group <= self.n_group,
              f"moe.topk_group ({self.topk_group}) must be in [1, n_group={self.n_group}]")
        check(self.num_experts_per_tok <= self.topk_group * (self.n_routed_experts // self.n_group),
              f"moe.num_experts_per_tok ({self.num_experts_per_tok}) exceeds the experts in topk_group "
              f"({self.topk_group}) groups of {self.n_routed_experts // self.n_group}")
        check(self.swiglu_limit is None or self.swiglu_limit > 0,
              f"moe.swiglu_limit must be > 0 or None, got {self.swiglu_limit}")


@dataclass
class HyperConfig:
    """Manifold-constrained hyper-connections (mHC): `hc_mult` residual streams mixed by a doubly-stochastic matrix.

    `enabled=False` is the plain pre-norm residual `x + f(norm(x))` (V2/V3)."""

    enabled: bool = True
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6

    def __post_init__(self) -> None:
        check(self.hc_mult >= 1, f"hyper.hc_mult must be >= 1, got {self.hc_mult}")
        check(self.hc_sinkhorn_iters >= 1, f"hyper.hc_sinkhorn_iters must be >= 1, got {self.hc_sinkhorn_iters}")


def is_prime(n: int) -> bool:
    """Deterministic trial division (table sizes are at most a few million)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


@dataclass
class NSAConfig:
    """Native Sparse Attention (arXiv 2502.11089; ../shared/reference/attention.md §3) for layer type `nsa`.

    GQA with `num_key_value_heads` shared K/V heads (heads / kv heads query heads per group); compression is mean
    pooling over non-overlapping blocks of `block_size` tokens (as fla-org/native-sparse-attention; l = d = l');
    each query attends to `block_count` selected blocks (the first block and the `local_blocks` most recent ones
    always included) and to the last `window_size` tokens."""

    num_key_value_heads: int = 1
    block_size: int = 64
    block_count: int = 16
    local_blocks: int = 2
    window_size: int = 512

    def __post_init__(self) -> None:
        for name in ("num_key_value_heads", "block_size", "block_count", "window_size"):
            check(getattr(self, name) > 0, f"nsa.{name} must be > 0, got {getattr(self, name)}")
        check(0 <= self.local_blocks and 1 + self.local_blocks <= self.block_count,
              f"nsa.block_count ({self.block_count}) must cover the initial block and nsa.local_blocks "
              f"({self.local_blocks})")


@dataclass
class EngramConfig:
    """Engram conditional memory (arXiv 2601.07372; ../shared/reference/mhc_engram.md §4).

    layers       0-indexed blocks that get an Engram module before their attention (empty: no Engram)
    max_ngram    N: suffix n-grams of orders 2..N are hashed (>= 2)
    n_heads      K hash heads per order, each with its own prime modulus
    table_size   rows of the first head's table; must be prime. Every (layer, order, head) table uses the next
                 unused prime, so all moduli are distinct primes >= table_size
    d_mem        total memory width, split evenly over the (N - 1) * K heads
    kernel_size  depthwise causal convolution taps (dilation N)
    seed         multiplier seed (layer l draws from seed + 10007 * l)
    pad_id       raw token id used left of the first token (mapped through the vocabulary compression)
    """

    layers: list[int] = field(default_factory=list)
    max_ngram: int = 3
    n_heads: int = 8
    table_size: int = 65537
    d_mem: int = 1024
    kernel_size: int = 4
    seed: int = 0
    pad_id: int = 0

    def __post_init__(self) -> None:
        self.layers = sorted(set(int(i) for i in self.layers))
        check(self.max_ngram >= 2, f"engram.max_ngram (the largest n-gram order) must be >= 2, got {self.max_ngram}")
        check(self.n_heads > 0, f"engram.n_heads must be > 0, got {self.n_heads}")
        check(is_prime(self.table_size), f"engram.table_size must be a prime number, got {self.table_size}")
        heads = (self.max_ngram - 1) * self.n_heads
        check(self.d_mem > 0 and self.d_mem % heads == 0,
              f"engram.d_mem ({self.d_mem}) must be a positive multiple of (max_ngram - 1) * n_heads = {heads}")
        check(self.kernel_size > 0, f"engram.kernel_size must be > 0, got {self.kernel_size}")
        check(self.pad_id >= 0, f"engram.pad_id must be >= 0, got {self.pad_id}")


@dataclass
class BackboneConfig:
    """The whole backbone: embeddings, `num_hidden_layers` blocks, final norm, LM head, MTP modules."""

    vocab_size: int = 129280
    hidden_size: int = 4096
    num_hidden_layers: int = 43
    layer_types: list[str] = field(default_factory=list)
    mlp_layer_types: list[str] = field(default_factory=list)
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 1048576
    num_nextn_predict_layers: int = 1
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = None
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    hyper: HyperConfig = field(default_factory=HyperConfig)
    nsa: NSAConfig = field(default_factory=NSAConfig)
    engram: EngramConfig = field(default_factory=EngramConfig)

    def __post_init__(self) -> None:
        if isinstance(self.attention, dict):
            self.attention = AttentionConfig(**self.attention)
        if isinstance(self.moe, dict):
            self.moe = MoEConfig(**self.moe)
        if isinstance(self.hyper, dict):
            self.hyper = HyperConfig(**self.hyper)
        if isinstance(self.nsa, dict):
            self.nsa = NSAConfig(**self.nsa)
        if isinstance(self.engram, dict):
            self.engram = EngramConfig(**self.engram)
        check(self.vocab_size > 0, f"vocab_size must be > 0, got {self.vocab_size}")
        check(self.hidden_size > 0, f"hidden_size must be > 0, got {self.hidden_size}")
        check(self.num_hidden_layers > 0, f"num_hidden_layers must be > 0, got {self.num_hidden_layers}")
        n = self.num_hidden_layers
        if not self.layer_types:
            self.layer_types = default_v4_layer_types(n)
        if not self.mlp_layer_types:
            self.mlp_layer_types = ["hash_moe"] * min(n, 3) + ["moe"] * max(0, n - 3)
        self.layer_types = list(self.layer_types)
        self.mlp_layer_types = list(self.mlp_layer_types)
        for name, types, allowed in (("layer_types", self.layer_types, ATTENTION_TYPES),
                                     ("mlp_layer_types", self.mlp_layer_types, MLP_TYPES)):
            check(len(types) == n, f"len({name}) ({len(types)}) must equal num_hidden_layers ({n})")
            bad = sorted({t for t in types if t not in allowed})
            check(not bad, f"unknown {name} {bad}; allowed: {allowed}")
        check("dense" not in self.mlp_layer_types or self.moe.intermediate_size > 0,
              f"'dense' MLP layers need moe.intermediate_size > 0, got {self.moe.intermediate_size}")
        check(self.num_nextn_predict_layers >= 0,
              f"num_nextn_predict_layers must be >= 0, got {self.num_nextn_predict_layers}")
        bad_layers = [i for i in self.engram.layers if not 0 <= i < n]
        check(not bad_layers, f"engram.layers {bad_layers} out of range [0, num_hidden_layers={n})")
        check(not self.engram.layers or self.engram.pad_id < self.vocab_size,
              f"engram.pad_id ({self.engram.pad_id}) must be < vocab_size ({self.vocab_size})")
        if "nsa" in self.layer_types:
            check(self.attention.num_attention_heads % self.nsa.num_key_value_heads == 0,
                  f"attention.num_attention_heads ({self.attention.num_attention_heads}) must be divisible by "
                  f"nsa.num_key_value_heads ({self.nsa.num_key_value_heads})")
        for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, token)
            check(v is None or 0 <= v < self.vocab_size, f"{token} ({v}) must be in [0, vocab_size={self.vocab_size})")

    # ----------------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BackboneConfig":
        reject_unknown_keys(cls, data)
        data = copy.deepcopy(data)
        for key, sub in (("attention", AttentionConfig), ("moe", MoEConfig), ("hyper", HyperConfig),
                         ("nsa", NSAConfig), ("engram", EngramConfig)):
            if isinstance(data.get(key), dict):
                reject_unknown_keys(sub, data[key], key)
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "BackboneConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> "BackboneConfig":
        """A copy with top-level fields replaced (sub-configs may be given as dicts of changes)."""
        data = self.to_dict()
        for key, value in changes.items():
            if key in ("attention", "moe", "hyper", "nsa", "engram") and isinstance(value, dict):
                data[key].update(value)
            else:
                data[key] = value
        return BackboneConfig.from_dict(data)


def default_v4_layer_types(n: int) -> list[str]:
    """Two HCA layers, then CSA / HCA interleaved (the layout transformers' DeepseekV4Config defaults to)."""
    rest = ["compressed_sparse_attention" if i % 2 else "heavily_compressed_attention" for i in range(max(n - 2, 0))]
    return (["heavily_compressed_attention"] * min(n, 2) + rest)[:n]


def flash_layer_types(n: int) -> list[str]:
    """V4-Flash: two sliding-window layers, then CSA (ratio 4) and HCA (ratio 128) alternating."""
    rest = ["compressed_sparse_attention" if i % 2 == 0 else "heavily_compressed_attention" for i in range(max(n - 2, 0))]
    return (["sliding_attention"] * min(n, 2) + rest)[:n]


# --------------------------------------------------------------------------------------------------------- presets
def _v3(dsa: bool) -> BackboneConfig:
    n = 61
    return BackboneConfig(
        vocab_size=129280, hidden_size=7168, num_hidden_layers=n, layer_types=["dsa" if dsa else "mla"] * n,
        mlp_layer_types=["dense"] * 3 + ["moe"] * (n - 3), max_position_embeddings=163840,
        num_nextn_predict_layers=1, bos_token_id=0, eos_token_id=1,
        attention=AttentionConfig(
            num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
            v_head_dim=128, head_dim=192, o_groups=1, o_lora_rank=1, rope_theta=10000.0,
            rope_scaling=RopeScaling(factor=40.0, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                                     mscale=1.0, mscale_all_dim=1.0),
            index_n_heads=64, index_head_dim=128, index_topk=2048),
        moe=MoEConfig(n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, moe_intermediate_size=2048,
                      intermediate_size=18432, scoring_func="sigmoid", norm_topk_prob=True,
                      routed_scaling_factor=2.5, n_group=8, topk_group=4, swiglu_limit=None),
        hyper=HyperConfig(enabled=False, hc_mult=1),
    )


def _v4(pro: bool) -> BackboneConfig:
    n = 61 if pro else 43
    return BackboneConfig(
        vocab_size=129280, hidden_size=7168 if pro else 4096, num_hidden_layers=n,
        layer_types=default_v4_layer_types(n) if pro else flash_layer_types(n),
        mlp_layer_types=["hash_moe"] * 3 + ["moe"] * (n - 3),
        max_position_embeddings=1048576, num_nextn_predict_layers=1,
        attention=AttentionConfig(
            num_attention_heads=128 if pro else 64, head_dim=512, q_lora_rank=1536 if pro else 1024,
            qk_rope_head_dim=64, o_groups=16 if pro else 8, o_lora_rank=1024, sliding_window=128,
            compress_rate_csa=4, compress_rate_hca=128, index_n_heads=64, index_head_dim=128,
            index_topk=1024 if pro else 512, rope_theta=10000.0, compress_rope_theta=160000.0,
            rope_scaling=RopeScaling(factor=16.0, original_max_position_embeddings=65536, beta_fast=32, beta_slow=1,
                                     attention_factor=1.0)),
        moe=MoEConfig(n_routed_experts=384 if pro else 256, n_shared_experts=1, num_experts_per_tok=6,
                      moe_intermediate_size=3072 if pro else 2048, scoring_func="sqrtsoftplus",
                      routed_scaling_factor=2.5 if pro else 1.5, swiglu_limit=10.0),
        hyper=HyperConfig(enabled=True, hc_mult=4, hc_sinkhorn_iters=20, hc_eps=1e-6),
    )


def _small_v4(debug: bool) -> BackboneConfig:
    n = 3 if debug else 6
    types = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]
    return BackboneConfig(
        vocab_size=512 if debug else 4096, hidden_size=32 if debug else 256, num_hidden_layers=n,
        layer_types=(types * 2)[:n], mlp_layer_types=["hash_moe"] + ["moe"] * (n - 1),
        max_position_embeddings=4096, num_nextn_predict_layers=1,
        attention=AttentionConfig(
            num_attention_heads=4 if debug else 8, head_dim=16 if debug else 64, q_lora_rank=16 if debug else 128,
            qk_rope_head_dim=8 if debug else 16, o_groups=2 if debug else 4, o_lora_rank=8 if debug else 64,
            sliding_window=8 if debug else 32, compress_rate_csa=2 if debug else 4,
            compress_rate_hca=4 if debug else 16, index_n_heads=2 if debug else 4,
            index_head_dim=8 if debug else 32, index_topk=2 if debug else 8,
            rope_scaling=RopeScaling(factor=4.0, original_max_position_embeddings=256, attention_factor=1.0)),
        moe=MoEConfig(n_routed_experts=4 if debug else 8, n_shared_experts=1, num_experts_per_tok=2,
                      moe_intermediate_size=16 if debug else 128, scoring_func="sqrtsoftplus",
                      routed_scaling_factor=1.5, swiglu_limit=10.0),
        hyper=HyperConfig(enabled=True, hc_mult=2 if debug else 4, hc_sinkhorn_iters=20 if not debug else 8),
    )


PRESETS = {
    "debug": lambda: _small_v4(debug=True),
    "tiny": lambda: _small_v4(debug=False),
    "deepseek-v3": lambda: _v3(dsa=False),
    "deepseek-v3.2": lambda: _v3(dsa=True),
    "deepseek-v4-flash": lambda: _v4(pro=False),
    "deepseek-v4-pro": lambda: _v4(pro=True),
}


def preset(name: str) -> BackboneConfig:
    """A fresh copy of a named preset: one of `PRESETS`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
