"""Reproducible CPU runs: the same weights and numbers on any x86-64 machine with AVX2.

What a CPU computes depends on more than the seeds: MKL picks its GEMM code path by processor,
ATen and oneDNN pick vectorised kernels by the CPU's instruction sets, and reductions split by
thread count. :func:`pin` fixes all of them, in the environment, before torch loads: MKL's
conditional numerical reproducibility (``MKL_CBWR=COMPATIBLE``), ATen's kernels
(``ATEN_CPU_CAPABILITY=avx2``), oneDNN's (``ONEDNN_MAX_CPU_ISA=AVX2``) and two threads
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``). Since torch reads them when it loads, the
``crrelu-llm`` command sets them and starts itself again (once) for ``demo`` and ``experiment``.

Not covered: GPUs, other package versions, ARM. Turn it off with ``reproducible: false`` in an
experiment recipe, or ``CRRELU_LLM_REPRODUCIBLE=0`` in the environment (faster on most
machines; the numbers are then the machine's own).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PINNED = {
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
}
SWITCH = "CRRELU_LLM_REPRODUCIBLE"
MARK = "CRRELU_LLM_PINNED"  # set in the restarted process


def wanted(argv: list[str]) -> bool:
    """Whether this command line should run pinned: ``demo`` and ``experiment`` (not ``--plan``),
    unless the environment or the recipe (``reproducible: false``) turns it off."""
    if not argv or argv[0] not in ("demo", "experiment") or "--plan" in argv or "--help" in argv or "-h" in argv:
        return False
    if os.environ.get(SWITCH, "1").lower() in ("0", "false", "no") or os.environ.get(MARK) == "1":
        return False
    recipe = None
    if argv[0] == "demo":
        recipe = Path(__file__).with_name("demo.yaml")
    elif "--config" in argv[:-1]:
        recipe = Path(argv[argv.index("--config") + 1])
    if recipe is not None and recipe.is_file():
        import yaml

        try:
            raw = yaml.safe_load(recipe.read_text())
        except yaml.YAMLError:
            return True  # the recipe's own error comes from the run
        if isinstance(raw, dict) and raw.get("reproducible") is False:
            return False
    return True


def restart_pinned(argv: list[str]) -> None:
    """Start this command again with the pinned environment (does not return)."""
    env = {**os.environ, **PINNED, MARK: "1"}
    os.execve(sys.executable, [sys.executable, "-m", "crrelu_llm.cli", *argv], env)


def settings() -> dict:
    """What the record of a run says about reproducibility."""
    return {"pinned": os.environ.get(MARK) == "1", **{key: os.environ.get(key) for key in PINNED}}
