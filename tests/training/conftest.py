"""Shared fixtures of the trainer tests: a run small enough for a loaded 2-core CPU (about 0.1 s per update)."""

from __future__ import annotations

import pytest
import torch

from multimodal.tokenizers.autoencoder import CausalAutoencoder
from multimodal.tokenizers.config import AutoencoderConfig
from multimodal.training.config import TrainConfig

TINY = dict(preset="debug", vocab_size=300, seq_len=16, micro_batch_size=2, grad_accum=1, train_samples=256,
            max_steps=4, warmup_steps=1, lr=3e-3, eval_every=0, eval_batches=1, save_every=0, log_every=1,
            progress=False, seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: faster on a shared 2-core machine, and the same reduction order in every process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config() -> TrainConfig:
    return TrainConfig(**TINY)


SMALL_AE = dict(channels=(8, 16, 16), latent_channels=16)     # a small, untrained causal autoencoder


@pytest.fixture(scope="module")
def autoencoder_file(tmp_path_factory):
    """The weights of a `SMALL_AE` autoencoder (seed 0), for media runs: `autoencoder=str(autoencoder_file)`."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    CausalAutoencoder(AutoencoderConfig(**SMALL_AE)).save_pretrained(path)
    return path
