#!/usr/bin/env bash
# Fetch the wheels the GPU machine lacks into .whl/ (ignored by git; carried by the device call, `carry: [".whl"]`).
# The device's image has torch, triton, numpy, pillow, safetensors, tokenizers, scikit-learn, scipy, transformers,
# huggingface-hub, requests, regex, filelock and zipp (device README, KINDS.md), but not diffusers or
# importlib-metadata (PyAV, 35 MB, would not fit the 64 MiB a call carries, and no stage of the pass reads or
# writes video files). Its python3 is CPython 3.12 on x86-64 (manylinux). Run here, where PyPI is reachable:
#   benchmarks/gpu_wheels.sh && du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && { grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude; }
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl diffusers==0.42.1 importlib-metadata==8.7.0
ls -la .whl
