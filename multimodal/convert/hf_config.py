"""Hugging Face `config.json` of DeepSeek-V3 (`deepseek_v3`), V3.2 (`deepseek_v32`) and V4 (`deepseek_v4`) <->
our `BackboneConfig`.

Conventions followed (transformers 5.24 `configuration_deepseek_v4.py`): V4 keeps the rope per "main" (sliding
layers, plain) and "compress" (CSA / HCA, YaRN) kinds in `rope_parameters`; legacy keys `compress_ratios`,
`compress_rate_csa/hca`, `num_hash_layers` and `qk_rope_head_dim` are understood. V4 always renormalises the
chosen experts' weights, so `norm_topk_prob` is read as True for V4.
"""

from __future__ import annotations

from typing import Any

from ..config import AttentionConfig, BackboneConfig, HyperConfig, MoEConfig, RopeScaling

_RATIO_TO_TYPE = {0: "sliding_attention", 4: "compressed_sparse_attention", 128: "heavily_compressed_attention"}
_YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
              "attention_factor")


def _yarn(params: dict | None) -> RopeScaling | None:
    if not params or params.get("rope_type", params.get("type", "default")) != "yarn":
        return None
    return RopeScaling(**{k: params[k] for k in _YARN_KEYS if params.get(k) is not None})


def _tokens(d: dict) -> dict[str, Any]:
    eos = d.get("eos_token_id")
    return dict(bos_token_id=d.get("bos_token_id"), eos_token_id=eos[0] if isinstance(eos, list) else eos,
                pad_token_id=d.get("pad_token_id"))


def from_hf_config(d: dict[str, Any]) -> BackboneConfig:
    """Our config from a Hugging Face DeepSeek `config.json` dict. Raises ValueError naming an unsupported type."""
    model_type = d.get("model_type")
    if model_type == "deepseek_v4":
        return _from_v4(d)
    if model_type in ("deepseek_v3", "deepseek_v32"):
        return _from_v3(d, dsa=model_type == "deepseek_v32")
    raise ValueError(f"unsupported model_type {model_type!r}; expected deepseek_v3, deepseek_v32 or deepseek_v4")


def _from_v4(d: dict) -> BackboneConfig:
    n = d["num_hidden_layers"]
    layer_types = d.get("layer_types") or ([_RATIO_TO_TYPE[r] for r in d["compress_ratios"]]
                                           if d.get("compress_ratios") else [])
    mlp_types = d.get("mlp_layer_types")
    if not mlp_types:
        n_hash = d.get("num_hash_layers", 3)
        mlp_types = ["hash_moe"] * min(n, n_hash) + ["moe"] * max(0, n - n_hash)
    rates = dict(d.get("compress_rates") or {})
    rates.setdefault("compressed_sparse_attention", d.get("compress_rate_csa", 4))
    rates.setdefault("heavily_compressed_attention", d.get("compress_rate_hca", 128))
    head_dim = d.get("head_dim", 512)
    rope_dim = d.get("qk_rope_head_dim") or int(head_dim * (d.get("partial_rotary_factor") or 64 / 512))
    rp = d.get("rope_parameters") or {}
    compress = rp.get("compress") if isinstance(rp.get("compress"), dict) else (rp or d.get("rope_scaling"))
    scaling = _yarn(compress)
    if scaling is not None and scaling.attention_factor is None:
        scaling.attention_factor = 1.0      # the V4 reference does not scale cos/sin
    main_theta = (rp.get("main") or {}).get("rope_theta", d.get("rope_theta", 10000.0))
    compress_theta = (compress or {}).get("rope_theta", d.get("compress_rope_theta", 160000.0)) \
        if isinstance(rp.get("compress"), dict) else d.get("compress_rope_theta", 160000.0)
    return BackboneConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_hidden_layers=n,
        layer_types=list(layer_types)[:n], mlp_layer_types=list(mlp_types)[:n],
        rms_norm_eps=d.get("rms_norm_eps", 1e-6), max_position_embeddings=d.get("max_position_embeddings", 1048576),
        num_nextn_predict_layers=d.get("num_nextn_predict_layers", 1),
        tie_word_embeddings=d.get("tie_word_embeddings", False), initializer_range=d.get("initializer_range", 0.02),
        **_tokens(d),
        attention=AttentionConfig(
            num_attention_heads=d["num_attention_heads"], head_dim=head_dim, q_lora_rank=d["q_lora_rank"],
            qk_rope_head_dim=rope_dim, o_groups=d.get("o_groups", 8), o_lora_rank=d.get("o_lora_rank", 1024),
            sliding_window=d.get("sliding_window", 128),
            compress_rate_csa=rates["compressed_sparse_attention"],
            compress_rate_hca=rates["heavily_compressed_attention"],
            index_n_heads=d.get("index_n_heads", 64), index_head_dim=d.get("index_head_dim", 128),
            index_topk=d.get("index_topk", 512), rope_theta=main_theta, compress_rope_theta=compress_theta,
            rope_scaling=scaling),
        moe=MoEConfig(
            n_routed_experts=d["n_routed_experts"], n_shared_experts=d.get("n_shared_experts", 1),
            num_experts_per_tok=d["num_experts_per_tok"], moe_intermediate_size=d["moe_intermediate_size"],
            scoring_func=d.get("scoring_func", "sqrtsoftplus"), norm_topk_prob=True,
            routed_scaling_factor=d.get("routed_scaling_factor", 1.5), swiglu_limit=d.get("swiglu_limit", 10.0)),
        hyper=HyperConfig(enabled=True, hc_mult=d.get("hc_mult", 4), hc_sinkhorn_iters=d.get("hc_sinkhorn_iters", 20),
                          hc_eps=d.get("hc_eps", 1e-6)),
    )


def _from_v3(d: dict, dsa: bool) -> BackboneConfig:
    n = d["num_hidden_layers"]
    k_dense = d.get("first_k_dense_replace", 0)
    rp = d.get("rope_parameters") or d.get("rope_scaling") or {}
    return BackboneConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_hidden_layers=n,
        layer_types=["dsa" if dsa else "mla"] * n, mlp_layer_types=["dense"] * min(n, k_dense) + ["moe"] * max(0, n - k_dense),
        rms_norm_eps=d.get("rms_norm_eps", 1e-6), max_position_embeddings=d.get("max_position_embeddings", 163840),
        num_nextn_predict_layers=d.get("num_nextn_predict_layers", 0),
        tie_word_embeddings=d.get("tie_word_embeddings", False), initializer_range=d.get("initializer_range", 0.02),
        **_tokens(d),
        attention=AttentionConfig(
            num_attention_heads=d["num_attention_heads"], q_lora_rank=d.get("q_lora_rank") or 0,
            kv_lora_rank=d["kv_lora_rank"], qk_nope_head_dim=d["qk_nope_head_dim"],
            qk_rope_head_dim=d["qk_rope_head_dim"], v_head_dim=d["v_head_dim"],
            head_dim=d["qk_nope_head_dim"] + d["qk_rope_head_dim"], o_groups=1, o_lora_rank=1,
            rope_theta=rp.get("rope_theta", d.get("rope_theta", 10000.0)), rope_scaling=_yarn(rp),
            index_n_heads=d.get("index_n_heads", 64), index_head_dim=d.get("index_head_dim", 128),
            index_topk=d.get("index_topk", 2048)),
        moe=MoEConfig(
            n_routed_experts=d["n_routed_experts"], n_shared_experts=d.get("n_shared_experts") or 0,
            num_experts_per_tok=d["num_experts_per_tok"], moe_intermediate_size=d["moe_intermediate_size"],
            intermediate_size=d.get("intermediate_size", 0), scoring_func=d.get("scoring_func", "sigmoid"),
            norm_topk_prob=d.get("norm_topk_prob", True), routed_scaling_factor=d.get("routed_scaling_factor", 1.0),
            n_group=d.get("n_group") or 1, topk_group=d.get("topk_group") or 1, swiglu_limit=None),
        hyper=HyperConfig(enabled=False, hc_mult=1),
    )


def to_hf_config(cfg: BackboneConfig) -> dict[str, Any]:
    """A Hugging Face `config.json` dict: `deepseek_v4` if any layer is a V4 type, else `deepseek_v32` / `deepseek_v3`."""
    a, m = cfg.attention, cfg.moe
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                  num_attention_heads=a.num_attention_heads, rms_norm_eps=cfg.rms_norm_eps,
                  max_position_embeddings=cfg.max_position_embeddings,
                  num_nextn_predict_layers=cfg.num_nextn_predict_layers, tie_word_embeddings=cfg.tie_word_embeddings,
                  initializer_range=cfg.initializer_range, bos_token_id=cfg.bos_token_id,
                  eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                  n_routed_experts=m.n_routed_experts, n_shared_experts=m.n_shared_experts,
                  num_experts_per_tok=m.num_experts_per_tok, moe_intermediate_size=m.moe_intermediate_size,
                  scoring_func=m.scoring_func, norm_topk_prob=m.norm_topk_prob,
                  routed_scaling_factor=m.routed_scaling_factor, hidden_act="silu")
    scaling = None
    if a.rope_scaling is not None:
        scaling = {"rope_type": "yarn", **{k: getattr(a.rope_scaling, k) for k in _YARN_KEYS
                                          if getattr(a.rope_scaling, k) is not None}}
    if any(t not in ("mla", "dsa") for t in cfg.layer_types):
        compress = {"rope_type": "default"} if scaling is None else dict(scaling)
        compress.update(rope_theta=a.compress_rope_theta, partial_rotary_factor=a.qk_rope_head_dim / a.head_dim)
        return dict(common, model_type="deepseek_v4", architectures=["DeepseekV4ForCausalLM"],
                    head_dim=a.head_dim, num_key_value_heads=1, q_lora_rank=a.q_lora_rank,
                    partial_rotary_factor=a.qk_rope_head_dim / a.head_dim, o_groups=a.o_groups,
                    o_lora_rank=a.o_lora_rank, sliding_window=a.sliding_window,
                    compress_rates={"compressed_sparse_attention": a.compress_rate_csa,
                                    "heavily_compressed_attention": a.compress_rate_hca},
                    index_n_heads=a.index_n_heads, index_head_dim=a.index_head_dim, index_topk=a.index_topk,
                    layer_types=list(cfg.layer_types), mlp_layer_types=list(cfg.mlp_layer_types),
                    rope_theta=a.rope_theta, compress_rope_theta=a.compress_rope_theta,
                    rope_parameters={"main": {"rope_type": "default", "rope_theta": a.rope_theta,
                                              "partial_rotary_factor": a.qk_rope_head_dim / a.head_dim},
                                     "compress": compress},
                    swiglu_limit=m.swiglu_limit, hc_mult=cfg.hyper.hc_mult,
                    hc_sinkhorn_iters=cfg.hyper.hc_sinkhorn_iters, hc_eps=cfg.hyper.hc_eps)
    dsa = "dsa" in cfg.layer_types
    rope = {"rope_type": "default", "rope_theta": a.rope_theta} if scaling is None else dict(scaling, rope_theta=a.rope_theta)
    out = dict(common, model_type="deepseek_v32" if dsa else "deepseek_v3",
               architectures=["DeepseekV32ForCausalLM" if dsa else "DeepseekV3ForCausalLM"],
               q_lora_rank=a.q_lora_rank or None, kv_lora_rank=a.kv_lora_rank, qk_nope_head_dim=a.qk_nope_head_dim,
               qk_rope_head_dim=a.qk_rope_head_dim, v_head_dim=a.v_head_dim, num_key_value_heads=a.num_attention_heads,
               first_k_dense_replace=cfg.mlp_layer_types.count("dense"), intermediate_size=m.intermediate_size,
               n_group=m.n_group, topk_group=m.topk_group, rope_parameters=rope)
    if dsa:
        out.update(index_n_heads=a.index_n_heads, index_head_dim=a.index_head_dim, index_topk=a.index_topk)
    return out
