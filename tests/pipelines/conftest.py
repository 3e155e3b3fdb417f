"""These tests run many tiny forwards: one intra-op thread is faster than fanning out (and the CI box is shared)."""

import torch

torch.set_num_threads(1)

import pytest

from multimodal.pipelines import TextToImagePipeline


def randomise_heads(pipe) -> None:
    """Give the zero-initialised adaLN / output layers of both flow heads random weights, as after training, so the
    condition and the noise reach the output."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for head in (pipe.model.image_head, pipe.model.video_head):
            for p in head.parameters():
                if p.ndim == 2 and p.abs().sum() == 0:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture(scope="session")
def pipe() -> TextToImagePipeline:
    """A small random pipeline (debug preset), shared by every pipeline test through `from_pipe`."""
    p = TextToImagePipeline.from_scratch("debug", seed=0)
    randomise_heads(p)
    p.set_progress_bar_config(disable=True)
    return p
