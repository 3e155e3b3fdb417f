"""Join the parts `benchmarks/gpu_train.py` cut a pipeline into, check them, unpack the pipeline folder.

    python benchmarks/gpu_join.py /work/.device/<run>/files runs/gpu-pipeline   # -> runs/gpu-pipeline/pipeline/

Every part and the whole are checked against `pipeline.manifest.json` (SHA-256); a missing or altered part is an
error naming it, and nothing is unpacked. The tar holds only regular files and folders under `pipeline/`
(`tarfile`'s "data" filter refuses links, absolute paths and `..`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def join(src: Path, dest: Path, name: str = "pipeline") -> Path:
    manifest_path = src / f"{name}.manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: no manifest (was the training stage run?)")
    manifest = json.loads(manifest_path.read_text())
    data = bytearray()
    for part in manifest["parts"]:
        path = src / part["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: part missing ({len(manifest['parts'])} parts expected)")
        chunk = path.read_bytes()
        if hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise ValueError(f"{path}: SHA-256 differs from the manifest (transfer damaged it)")
        data += chunk
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise ValueError(f"{src}: the joined parts differ from the manifest's whole")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r") as tar:
        tar.extractall(dest, filter="data")
    return dest / name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="folder holding pipeline.tar.partNN and pipeline.manifest.json")
    p.add_argument("dest", type=Path, help="folder to unpack into")
    args = p.parse_args(argv)
    try:
        folder = join(args.src, args.dest)
    except (OSError, ValueError) as exc:
        print(f"gpu_join: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
