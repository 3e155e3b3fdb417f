"""Cheap imports (DESIGN.md): `import multimodal` loads no heavy dependency, every public name still resolves, and
the CLI answers --help without torch and generates without diffusers. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "av", "sklearn", "scipy", "transformers", "triton", "torch._dynamo")


def fresh(code: str) -> dict:
    """Run `code` in a new interpreter; it ends by printing one JSON value, returned here."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def loaded(after: str) -> str:
    return f"{after}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"


def test_import_multimodal_loads_no_heavy_module():
    assert fresh(loaded("import multimodal")) == []
    assert fresh(loaded("import multimodal.pipelines, multimodal.cli")) == []


def test_every_public_name_resolves_and_is_listed():
    result = fresh("""
import json, multimodal, multimodal.pipelines
names = list(multimodal.__all__)
missing = [n for n in names if n not in dir(multimodal)]
values = {n: type(getattr(multimodal, n)).__name__ for n in names}
pipes = {n: type(getattr(multimodal.pipelines, n)).__name__ for n in multimodal.pipelines.__all__}
ns = {}
exec("from multimodal import *", ns)
print(json.dumps({"missing": missing, "n": len(names), "star": sorted(set(names) - set(ns)), "pipes": len(pipes),
                  "bad": [n for n in names if n.startswith("_") and n != "__version__"]}))
""")
    assert result["missing"] == [] and result["star"] == [] and result["bad"] == []
    assert result["n"] == 63 and result["pipes"] == 14            # as many names as before, plus caption_errors


def test_names_are_the_objects_of_their_modules_and_unknown_names_raise():
    import multimodal
    from multimodal.pipelines.base import TextToImagePipeline
    from multimodal.pipelines.output import export_to_video

    assert multimodal.TextToImagePipeline is TextToImagePipeline and multimodal.export_to_video is export_to_video
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        multimodal.NoSuchThing  # noqa: B018


def test_the_model_and_training_load_torch_but_nothing_else_heavy():
    assert fresh(loaded("import multimodal.model, multimodal.training, multimodal.kernels")) == ["torch"]


def test_cli_help_and_argument_errors_do_not_import_torch():
    code = """
import contextlib, io, sys
from multimodal.cli import main
for argv in (["--help"], ["generate-image", "--help"], ["caption-video", "--help"], ["generate-image"],
             ["generate-image", "-o", "a.png"], ["generate-image", "a", "-o", "a.png", "--candidates", "0"],
             ["generate-image", "a", "b", "-o", "{slug}.png", "--num", "2"], ["caption-video", "/no/such.mp4"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
"""
    assert fresh(loaded(code)) == []


def test_cli_generates_and_captions_without_diffusers(tmp_path):
    """The commands run the pipelines' logic on the diffusers-free core: torch and nothing else heavy but PyAV for
    the video file."""
    code = f"""
from multimodal.cli import main
assert main(["generate-image", "a large red circle", "-o", {str(tmp_path / "a.png")!r}, "--steps", "1",
             "--candidates", "1", "--no-progress"]) == 0
assert main(["caption-image", {str(tmp_path / "a.png")!r}, "--max-new-tokens", "2"]) == 0
"""
    assert fresh(loaded(code)) == ["torch"]
