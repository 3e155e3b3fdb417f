"""Post-processing to pil / np / pt and writing videos with PyAV."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal.io import read_video
from multimodal.pipelines import export_to_video
from multimodal.pipelines.output import postprocess_images, postprocess_video


def test_postprocess_maps_minus_one_one_to_unit_range_in_every_format():
    pixels = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 4).expand(2, 3, 1, 4)    # [B, 3, H=1, W=4]
    np_images = postprocess_images(pixels, "np")
    assert np_images.shape == (2, 1, 4, 3)
    np.testing.assert_allclose(np_images[0, 0, :, 0], [0.0, 0.5, 1.0, 1.0])
    pil = postprocess_images(pixels, "pil")
    assert np.asarray(pil[1])[0, :, 2].tolist() == [0, 128, 255, 255]
    video = torch.zeros(1, 3, 5, 2, 2)
    video[:, :, 4] = 1.0
    assert postprocess_video(video, "pt").shape == (1, 5, 3, 2, 2)
    frames = postprocess_video(video, "np")
    assert frames.shape == (1, 5, 2, 2, 3) and frames[0, 4].min() == 1.0 and frames[0, 0].max() == 0.5
    assert len(postprocess_video(video, "pil")[0]) == 5


@pytest.mark.parametrize("kind", ["np_float", "uint8", "pil", "tensor"])
def test_export_to_video_writes_what_it_gets(kind, tmp_path):
    frames = np.zeros((9, 32, 48, 3), dtype=np.float32)
    for t in range(9):
        frames[t, :, 4 * t:4 * t + 8, 0] = 1.0                           # a red bar moving right
    given = {"np_float": frames, "uint8": (frames * 255).astype(np.uint8),
             "pil": [Image.fromarray((f * 255).astype(np.uint8)) for f in frames],
             "tensor": torch.from_numpy(frames).permute(0, 3, 1, 2)}[kind]
    path = export_to_video(given, tmp_path / "v.mp4", fps=8)
    back = read_video(path)
    assert back.shape == (9, 32, 48, 3)
    assert np.abs(back.astype(float) - frames * 255).mean() < 4.0
    with pytest.raises(ValueError, match="expected frames"):
        export_to_video(np.zeros((4, 4, 3)), tmp_path / "bad.mp4")
