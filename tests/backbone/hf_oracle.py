"""Build random transformers DeepSeek-V4 models (the test oracle) and write them with `save_pretrained`."""

from __future__ import annotations

from pathlib import Path

import torch

from .random_model import randomize_parameters_

transformers = __import__("pytest").importorskip("transformers")


def v4_hf_config(**overrides):
    base = dict(vocab_size=96, hidden_size=32, moe_intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
                head_dim=16, q_lora_rank=16, partial_rotary_factor=0.5, num_experts_per_tok=2, n_routed_experts=4,
                o_groups=2, o_lora_rank=8, index_n_heads=8, index_head_dim=8, index_topk=3, sliding_window=8,
                hc_mult=4, hc_sinkhorn_iters=20,
                compress_rates={"compressed_sparse_attention": 2, "heavily_compressed_attention": 4},
                layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
                mlp_layer_types=["hash_moe", "moe", "moe"],
                rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                 "beta_fast": 32, "beta_slow": 1},
                max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    base.update(overrides)
    return transformers.DeepseekV4Config(**base)


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and buffer random (the library's init leaves sinks, biases and hash tables at zero)."""
    g = torch.Generator().manual_seed(seed)
    randomize_parameters_(model, g)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("tid2eid"):
                n_exp = model.config.n_routed_experts
                b.copy_(torch.stack([torch.randperm(n_exp, generator=g)[: b.shape[1]] for _ in range(b.shape[0])]))
            elif name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.1, generator=g)


def save_random_v4(path: Path, seed: int, **overrides):
    """-> the transformers model (eval mode) after writing it to `path`."""
    torch.manual_seed(seed)
    model = transformers.DeepseekV4ForCausalLM(v4_hf_config(**overrides)).eval()
    randomize_(model, seed)
    model.save_pretrained(path)
    return model
