"""Cold-start wall time of the commands a new user types, in fresh processes, before and after a change, as JSON.

    python benchmarks/startup.py                                   # this checkout only
    python benchmarks/startup.py --before /tmp/base --repeats 5    # and a checkout of the code to compare with

Each repeat runs every (command, checkout) pair once in a fresh interpreter, round-robin, so load from other jobs
falls on both sides alike; the table gives the median of `--repeats` wall times (and the spread). A checkout is put
first on PYTHONPATH, so the same virtual environment (torch, diffusers, ...) serves both; the `multimodal` command
is the environment's console script (`from multimodal.cli import main`), which then loads that checkout's code.

Commands: `import torch` (the floor), `import multimodal`, `multimodal --help`, `multimodal generate-image
"a large red circle" -o red.png` (the default settings: 28 steps, the best of DEFAULT_CANDIDATES drafts), the same
with `--candidates 1`, and `multimodal caption-video` of one 17-frame clip of the world's test split. The goals
(issue #18, 2-core CPU): import multimodal <= import torch + 0.5 s; --help <= 0.5 s; one image <= 3.5 s; one
caption <= 3.5 s. The last run's output of each command is kept in the JSON (what a user sees).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"import multimodal": "<= import torch + 0.5 s", "multimodal --help": "<= 0.5 s",
         "generate-image": "<= 3.5 s", "caption-video": "<= 3.5 s"}


def cli() -> list[str]:
    """The `multimodal` console script of this environment, or its equivalent."""
    script = Path(sys.executable).parent / "multimodal"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from multimodal.cli import main; sys.exit(main())"]


def commands(work: Path, clip: Path) -> dict[str, list[str]]:
    """name -> the arguments after `python -c` or after `multimodal` (`cmd` turns them into a command line)."""
    return {
        "import torch": ["-c", "import torch"],
        "import multimodal": ["-c", "import multimodal"],
        "multimodal --help": ["--help"],
        "generate-image": ["generate-image", "a large red circle", "-o", str(work / "red.png")],
        "generate-image --candidates 1": ["generate-image", "a large red circle", "-o", str(work / "red1.png"),
                                          "--candidates", "1"],
        "caption-video": ["caption-video", str(clip)],
    }


def cmd(args: list[str]) -> list[str]:
    return [sys.executable, *args] if args[0] == "-c" else cli() + args


def run(argv: list[str], checkout: Path, cwd: Path) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{argv} under {checkout} failed:\n{out.stderr[-2000:]}")
    return seconds, out.stdout + out.stderr


def terminal_view(text: str) -> str:
    """What a terminal shows of captured output: a progress bar's carriage-return updates collapse to the last."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def machine() -> dict:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import torch

    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average_at_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, default=None, help="a checkout of the code to compare with")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup_cpu.json")
    args = ap.parse_args()
    checkouts = {"after": ROOT} if args.before is None else {"before": args.before.resolve(), "after": ROOT}
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    try:
        run(cli() + ["world", str(work / "world"), "--images", "0", "--videos", "1"], ROOT, work)   # the clip
        clip = next((work / "world").rglob("*.mp4"))
        table = commands(work, clip)
        times: dict[str, dict[str, list[float]]] = {name: {side: [] for side in checkouts} for name in table}
        outputs: dict[str, dict[str, str]] = {name: {} for name in table}
        for r in range(args.repeats):
            for name, argv in table.items():
                for side, checkout in checkouts.items():
                    seconds, text = run(cmd(argv), checkout, work)
                    times[name][side].append(seconds)
                    outputs[name][side] = terminal_view(text.replace(str(work), "<tmp>"))
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = {}
    for name, argv in table.items():
        shown = ["python", *argv] if argv[0] == "-c" else ["multimodal", *argv]
        rows[name] = {"command": " ".join(a.replace(str(work), "<tmp>") for a in shown)}
        for side in checkouts:
            runs = times[name][side]
            rows[name][side] = {"median_s": round(statistics.median(runs), 3), "min_s": round(min(runs), 3),
                                "max_s": round(max(runs), 3), "runs_s": [round(t, 3) for t in runs],
                                "output": outputs[name][side]}
    after = {name: rows[name]["after"]["median_s"] for name in rows}
    met = {"import multimodal": after["import multimodal"] <= after["import torch"] + 0.5,
           "multimodal --help": after["multimodal --help"] <= 0.5,
           "generate-image": after["generate-image"] <= 3.5,
           "caption-video": after["caption-video"] <= 3.5}
    report = {"machine": machine(), "repeats": args.repeats, "checkouts": {k: str(v) for k, v in checkouts.items()},
              "cli": "console script" if len(cli()) == 1 else "python -c main()", "goals": GOALS, "goals_met": met,
              "commands": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sides = list(checkouts)
    print("| command | " + " | ".join(f"{s} (median s)" for s in sides) + " | goal |")
    print("|---|" + "---|" * len(sides) + "---|")
    for name in rows:
        cells = " | ".join(f"{rows[name][s]['median_s']:.2f}" for s in sides)
        goal = GOALS.get(name, "")
        mark = "" if name not in met else (" (met)" if met[name] else " (not met)")
        print(f"| `{name}` | {cells} | {goal}{mark} |")


if __name__ == "__main__":
    main()
