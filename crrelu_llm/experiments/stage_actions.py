"""What a training stage of an experiment does: run ``sft``/``dpo``/``distill`` in this process
or under the recipe's launcher, or write the arm's step-0 model."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from pathlib import Path

import yaml

from crrelu_llm.errors import ExperimentError
from crrelu_llm.files import write_text_atomic

logger = logging.getLogger("crrelu_llm.experiment")


def train_stage(command: str, keys: dict, output_dir: Path, launcher: str | None = None) -> None:
    """One training stage: in this process (:func:`crrelu_llm.training.train.run_keys`), or as a command
    under ``launcher``; resumes by itself. The stage's keys are kept beside its outputs."""
    keys = {**keys, "output_dir": str(output_dir)}
    recipe = Path(output_dir) / f"{command}_stage.yaml"
    write_text_atomic(recipe, yaml.safe_dump(keys, sort_keys=True))
    if launcher:
        cmd = [*launcher_command(launcher), "-m", "crrelu_llm.cli", command, "--config", str(recipe)]
        logger.info("running %s", " ".join(cmd))
        from crrelu_llm.patching.trust import environment

        result = subprocess.run(cmd, env=environment([keys.get("activation")]))  # what this stage trusts, passed on
        if result.returncode != 0:
            raise ExperimentError(f"stage {command} in {output_dir} failed under the launcher (exit "
                                  f"{result.returncode}); its output is above, and rerunning resumes it")
        return
    from crrelu_llm.training.train import run_keys

    run_keys(command, keys, source=str(recipe))


def write_step0(command: str, keys: dict, out: Path) -> None:
    """The arm's model at step 0: loaded and patched by the function its first training stage
    (``command`` with ``keys``) patches with, so both start from the same modules and eps."""
    from crrelu_llm.training.train import write_patched_start

    write_patched_start(command, keys, Path(out))


def launcher_command(launcher: str) -> list[str]:
    """The launcher's words; ``accelerate launch`` gets ``--num_processes`` = the GPUs this process
    was given (``CUDA_VISIBLE_DEVICES``, set by ``--executor local`` or Slurm) unless it names a
    count itself: its config file's count is the node's, not the stage's share of it."""
    words = shlex.split(launcher)
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    is_accelerate = any("accelerate" in w for w in words) and any(w == "launch" or w.endswith(".launch") for w in words)
    if is_accelerate and visible and not any(w.startswith("--num_processes") for w in words):
        at = next(i for i, w in enumerate(words) if w == "launch" or w.endswith(".launch")) + 1
        words[at:at] = ["--num_processes", str(len(visible))]
    return words
