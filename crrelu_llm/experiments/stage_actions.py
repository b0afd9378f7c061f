"""What a training stage of an experiment does: run ``sft``/``dpo``/``distill`` in this process
or under the recipe's launcher, or write the arm's step-0 model."""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import subprocess
from pathlib import Path

import yaml

from crrelu_llm import run_files
from crrelu_llm.data.preference import DataArguments
from crrelu_llm.errors import ExperimentError
from crrelu_llm.files import write_directory_atomic, write_json, write_text_atomic
from crrelu_llm.training.config import PatchArguments

logger = logging.getLogger("crrelu_llm.experiment")


class TrackedStage:
    """An evaluation stage, then what it wrote sent to the stage's trackers: its estimates (value,
    interval ends, n; :func:`crrelu_llm.evaluation.results.estimates`) in a tracker run of its own
    (:func:`crrelu_llm.trackers.log_stage`). Picklable, as every stage action is."""

    def __init__(self, action, kind: str, files: list[Path], report_to: list[str], identity: dict, log_dir: Path):
        self.action, self.kind, self.files, self.report_to = action, kind, files, report_to
        self.identity, self.log_dir = identity, log_dir

    def __call__(self):
        from crrelu_llm.evaluation import results
        from crrelu_llm.trackers import log_stage

        done = self.action()
        values = {}
        for file in self.files:
            if Path(file).exists():
                values.update(results.estimates(self.kind, results.read(file)))
        name = f"{self.identity['experiment']}/{self.identity['name']}"  # the stage's own, unique name
        log_stage(self.report_to, name, self.identity["experiment"], self.identity, values, self.log_dir)
        return done


def train_stage(
    command: str, keys: dict, output_dir: Path, launcher: str | None = None, identity: dict | None = None
) -> None:
    """One training stage: in this process (:func:`crrelu_llm.training.train.run_keys`), or as a command
    under ``launcher``; resumes by itself. The stage's keys are kept beside its outputs. ``identity``
    names its tracker run (``run_name``: experiment/arm/stage) and groups it (W&B's group: the
    experiment); a run left open is finished, so that the next stage starts its own."""
    keys = {**keys, "output_dir": str(output_dir)}
    if identity:
        keys.setdefault(
            "run_name", "/".join(str(identity[k]) for k in ("experiment", "arm", "stage") if identity.get(k))
        )
        os.environ["WANDB_RUN_GROUP"] = str(identity["experiment"])
    recipe = Path(output_dir) / f"{command}_stage.yaml"
    write_text_atomic(recipe, yaml.safe_dump(keys, sort_keys=True))
    if launcher:
        cmd = [*launcher_command(launcher), "-m", "crrelu_llm.cli", command, "--config", str(recipe)]
        logger.info("running %s", " ".join(cmd))
        from crrelu_llm.patching.trust import environment

        result = subprocess.run(cmd, env=environment([keys.get("activation")]))  # what this stage trusts, passed on
        if result.returncode != 0:
            raise ExperimentError(
                f"stage {command} in {output_dir} failed under the launcher (exit "
                f"{result.returncode}); its output is above, and rerunning resumes it"
            )
        return
    from crrelu_llm.trackers import finish_training_run
    from crrelu_llm.training.train import run_keys

    try:
        run_keys(command, keys, source=str(recipe))
    finally:
        finish_training_run()


# What the model a run starts training from depends on (what write_step0 reads): the model and
# its loading, the patch, and the data (calibration reads its rows). An optimiser setting is not
# among them: changing one retrains, but leaves the step-0 model as it is.
START_MODEL_KEYS = frozenset(
    {"model_name_or_path", "model_revision", "dtype", "trust_remote_code", "seed"}
    | {
        f.name
        for f in dataclasses.fields(PatchArguments)
        if f.name not in ("activation_parameters", "reference", "overwrite_output_dir", "crrelu_kernel")
    }
    | {f.name for f in dataclasses.fields(DataArguments)}
)


def start_keys(keys: dict) -> dict:
    """The part of a training stage's ``keys`` that its starting model depends on."""
    return {k: v for k, v in keys.items() if k in START_MODEL_KEYS}


def write_step0(command: str, keys: dict, out: Path) -> dict | None:
    """Write to ``out`` the model a ``command`` run with ``keys`` starts training from: loaded and
    patched by the functions its training run uses (:mod:`crrelu_llm.training.models`), with its
    tokenizer and ``patch_report.json``, so that what step 0 measures is what the arm trains."""
    from crrelu_llm.training import models
    from crrelu_llm.training.objectives import OBJECTIVES
    from crrelu_llm.training.recipes import recipe_from_dict
    from crrelu_llm.training.train import training_splits

    out = Path(out)
    patch_args, data_args, training_args, model_args = recipe_from_dict(command, {**keys, "output_dir": str(out)})
    train_data, _, _ = training_splits(OBJECTIVES[command], data_args)
    tokenizer = models.load_run_tokenizer(patch_args, model_args, training_args)
    model = models.load_model(model_args, training_args, seeded=True)
    report = models.patch_policy(model, patch_args, model_args, tokenizer, train_data)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / run_files.PATCH_REPORT, report)

    write_directory_atomic(out, True, write)
    return report


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
