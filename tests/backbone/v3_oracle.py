"""Random transformers DeepSeek-V3 / V3.2 models (the test oracle for MLA, DSA and the V3 gate)."""

from __future__ import annotations

from pathlib import Path

import torch

from .hf_oracle import randomize_, transformers


def v3_hf_kwargs(**overrides) -> dict:
    """A tiny V3 config: YaRN with mscale (softmax-scale correction), group-limited sigmoid gate, 1 dense layer."""
    base = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8, num_experts_per_tok=2, n_group=4,
                topk_group=2, first_k_dense_replace=1, n_shared_experts=1, routed_scaling_factor=2.5,
                norm_topk_prob=True, max_position_embeddings=256,
                rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                 "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
                                 "mscale": 1.0, "mscale_all_dim": 1.0},
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    base.update(overrides)
    return base


def save_random_v3(path: Path, seed: int, dsa: bool = False, **overrides):
    """Write a random V3 (or, with `dsa`, V3.2) model with `save_pretrained`; -> the transformers model (eval)."""
    torch.manual_seed(seed)
    kwargs = v3_hf_kwargs(**overrides)
    if dsa:
        kwargs = dict(dict(index_n_heads=16, index_head_dim=16, index_topk=4), **kwargs)
        model = transformers.DeepseekV32ForCausalLM(transformers.DeepseekV32Config(**kwargs))
    else:
        model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**kwargs))
    model = model.eval()
    randomize_(model, seed)
    model.save_pretrained(path)
    return model
