#!/usr/bin/env python
"""Print the lowest version pyproject.toml allows of every direct dependency (and of the given
extras), as `name==version` lines, for installing the bottom of every range:

    python scripts/lowest_requirements.py test > lowest.txt
    uv pip install -r lowest.txt -e ".[test]"

torch is left at the build the README installs (`torch==2.13.0`, the CPU wheel): its floor has no
CPU wheel for this Python. A dependency without a lower bound is an error: every range is tested
from its bottom.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
KEPT = {"torch": "torch==2.13.0"}


def lowest(requirement: str) -> str:
    spec = requirement.split(";")[0].strip()
    name = re.match(r"[A-Za-z0-9_.\-]+", spec).group(0)
    if name.lower() in KEPT:
        return KEPT[name.lower()]
    exact = re.search(r"==\s*([^,\s]+)", spec)
    floor = exact or re.search(r">=\s*([^,\s]+)", spec)
    if floor is None:
        raise SystemExit(f"pyproject.toml: {spec!r} has no lower bound; give it one (>=X)")
    marker = requirement.split(";", 1)[1].strip() if ";" in requirement else ""
    return f"{name}=={floor.group(1)}" + (f"; {marker}" if marker else "")


def main(extras: list[str]) -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    print("\n".join(dict.fromkeys(lowest(r) for r in requirements)))


if __name__ == "__main__":
    main(sys.argv[1:])
