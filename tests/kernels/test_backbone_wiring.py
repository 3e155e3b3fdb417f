"""The backbone runs its hot paths through the public kernel ops when Triton can run, and gets the same logits
as its PyTorch path: MoE experts (`moe_ffn`), mHC (`mhc_pre` / `mhc_post`), the lightning indexer
(`indexer_topk`) and window + compressed-entry attention as index lists (`sparse_mqa`).

Runs where Triton runs (CUDA, or the CPU interpreter subprocess of test_interpreter.py). fp32, tolerance 1e-4
relative to the largest logit; prefill and cached decoding both."""

from __future__ import annotations

import torch

from multimodal.config import preset

from ..backbone.random_model import random_model
from .conftest import needs_triton


@needs_triton
def test_backbone_logits_with_kernels_equal_the_pytorch_path(monkeypatch):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = preset("debug").replace(num_nextn_predict_layers=0, attention={"index_n_heads": 8},
                                  moe={"moe_intermediate_size": 16})
    model = random_model(cfg, seed=7).to(device)
    ids = torch.randint(0, cfg.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0

    def run(policy: str) -> torch.Tensor:
        monkeypatch.setenv("MULTIMODAL_KERNELS", policy)
        with torch.no_grad():
            cache = model.new_cache()
            out = [model(ids[:, :15], attention_mask=mask[:, :15], cache=cache).logits]
            for t in range(15, 19):
                out.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits)
        return torch.cat(out, dim=1)

    reference, kernels = run("torch"), run("triton")
    real = mask.bool()
    err = (kernels - reference)[real].abs().max() / reference[real].abs().max()
    assert err < 1e-4, f"relative logit error {err:.2e}"
