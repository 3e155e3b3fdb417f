"""What the repository promises about itself: no shadowed import names, CI runs the README's commands, the CLI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_tokenizers_from_the_repository_root_is_hugging_faces():
    out = subprocess.run([sys.executable, "-c", "import tokenizers; print(tokenizers.__file__)"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "site-packages" in out and str(ROOT / "tokenizers") not in out
    for name in ("tokenizers", "kernels", "backbone", "decoders"):
        assert not (ROOT / name / "__init__.py").exists()


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    install, test = blocks[0].strip(), blocks[1].strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install.startswith("python -m pip install") and install in ci_lines
    assert test.startswith("python -m pytest") and test in ci_lines


def test_cli_prints_version_and_presets():
    out = subprocess.run([sys.executable, "-m", "multimodal.cli", "info"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "deepseek-v4-flash" in out.stdout and "671.0B" in out.stdout


def test_cli_reports_a_bad_preset_in_one_line():
    out = subprocess.run([sys.executable, "-m", "multimodal.cli", "info", "--preset", "v9"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unknown preset 'v9'" in out.stderr
