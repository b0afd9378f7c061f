"""The benchmark record: each run's figures kept as ``benchmarks/results/<name>-<commit>-<machine>.json``,
with the environment it ran in, so that the docs can quote a figure with where it came from.

    python benchmarks/bench_activation.py --record        # -> benchmarks/results/activation-<commit>-<machine>.json

``--json FILE`` still writes wherever it is told; ``--record`` picks the record's own name.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def commit() -> str:
    """The short commit the benchmark ran at, ``+dirty`` when the work tree differs from it."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine(environment: dict) -> str:
    """A file-name key for the machine: its CPU (or first GPU) model and how many CPUs it used."""
    device = (environment.get("gpus") or [environment.get("cpu") or "unknown"])[0]
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")[:40]
    return f"{slug}-{environment.get('cpus_usable')}cpu"


def meta(**extra) -> dict:
    """What every record holds besides its figures: command, commit, machine, environment, time."""
    sys.path.insert(0, str(ROOT))
    from crrelu_llm.environment import environment

    env = environment()
    return {
        "argv": sys.argv,
        "commit": commit(),
        "machine": machine(env),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "environment": env,
        **extra,
    }


def record_path(name: str, meta: dict) -> Path:
    return RESULTS / f"{name}-{meta['commit']}-{meta['machine']}.json"


def output_path(args, name: str, meta: dict) -> Path | None:
    """Where a script writes its figures: ``--json FILE``, or the record with ``--record``."""
    if getattr(args, "json", None):
        return Path(args.json)
    return record_path(name, meta) if getattr(args, "record", False) else None


def add_flags(parser) -> None:
    parser.add_argument("--json", help="write all figures to this file")
    parser.add_argument(
        "--record",
        action="store_true",
        help="write them to the benchmark record: benchmarks/results/<name>-<commit>-<machine>.json",
    )
