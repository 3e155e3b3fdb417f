"""examples/quickstart.ipynb runs end to end with nbclient on the CPU (a small saved pipeline, 2 denoising steps)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from multimodal.pipelines import TextToImagePipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_pipeline(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return str(TextToImagePipeline.from_scratch("debug", seed=0).save_pretrained(tmp_path_factory.mktemp("nb") / "pipe"))


def test_quickstart_notebook_runs_and_shows_images_video_and_captions(small_pipeline, monkeypatch):
    monkeypatch.setenv("MULTIMODAL_MODEL", small_pipeline)
    monkeypatch.setenv("MULTIMODAL_STEPS", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"loaded {small_pipeline!r}" in text
    assert "4 images of (64, 64)" in text and "(17, 64, 64, 3)" in text
    assert text.count("model caption:") == 2 and text.count("sampled:") == 2
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1                                      # the grid
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("<video" in h and "base64" in h for h in html)    # the inline video
