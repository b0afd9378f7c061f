"""The trackers a recipe reports to (``report_to``): each one checked installed before any model
loads, with the install that brings it; and what an experiment sends them beyond training logs:
each evaluation stage's estimates in a run of its own (:func:`log_stage`), and the report's pooled
table (:func:`log_table`).

TensorBoard comes with crrelu-llm (every shipped recipe reports to it); the others are
transformers' integrations, installed with an extra (``pip install "crrelu-llm[wandb]"``) or on
their own. The names and the test of what is installed are transformers' own.

Example::

    >>> from crrelu_llm.trackers import check_trackers, tracker_names
    >>> tracker_names("none"), tracker_names(["tensorboard"])
    ([], ['tensorboard'])
    >>> check_trackers(["tensorboard"], "recipe.yaml")  # installed with crrelu-llm: nothing to say
"""

from __future__ import annotations

import json
from pathlib import Path

from crrelu_llm.errors import RecipeError, did_you_mean

# tracker -> what installs it (an extra of this project where there is one, else the package)
INSTALL = {
    "tensorboard": "pip install tensorboard (crrelu-llm installs it; a partial install may lack it)",
    "wandb": 'pip install "crrelu-llm[wandb]"',
    "mlflow": "pip install mlflow",
    "trackio": "pip install trackio",
    "comet_ml": "pip install comet_ml",
    "neptune": "pip install neptune",
    "clearml": "pip install clearml",
    "dvclive": "pip install dvclive",
    "swanlab": "pip install swanlab",
    "codecarbon": "pip install codecarbon",
}


def tracker_names(report_to) -> list[str]:
    """``report_to`` (a name, a list, ``none`` or ``all``) as the list of trackers it names;
    ``all`` is every installed one, as transformers reads it."""
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if "all" in names:
        from transformers.integrations import get_available_reporting_integrations

        return get_available_reporting_integrations()
    return [n for n in names if n != "none"]


def check_trackers(report_to, source: str) -> None:
    """Refuse, in one line naming the install, a tracker that is not installed or not known."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    installed = set(get_available_reporting_integrations())
    for name in tracker_names(report_to):
        if name not in INTEGRATION_TO_CALLBACK:
            raise RecipeError(
                f"{source}: report_to: {name!r} is not a tracker transformers knows "
                f"({', '.join(sorted(INTEGRATION_TO_CALLBACK))})" + did_you_mean(name, INTEGRATION_TO_CALLBACK)
            )
        if name not in installed:
            how = INSTALL.get(name, f"pip install {name}")
            raise RecipeError(f"{source}: report_to: {name} is not installed: {how}, or remove it from report_to")


# The trackers that receive an evaluation's estimates and an experiment's pooled table. Training logs
# reach every tracker transformers knows; these two also get what the evaluations measured.
EVIDENCE_TRACKERS = ("tensorboard", "wandb")


def _scalars(estimates: dict[str, dict]) -> dict[str, float]:
    """``{"win_rate/value": 0.54, "win_rate/low": ..., "win_rate/high": ..., "win_rate/n": 500}``."""
    return {
        f"{name}/{part}": float(e[part])
        for name, e in estimates.items()
        for part in ("value", "low", "high", "n")
        if e.get(part) is not None
    }


def _tensorboard_writer(log_dir: Path, name: str):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(log_dir) / "tensorboard" / name))


def _wandb_run(log_dir: Path, name: str, group: str, config: dict, job_type: str):
    import wandb

    if wandb.run is not None:  # a stage never logs into another stage's run
        wandb.finish()
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(name=name, group=group, config=config, job_type=job_type, dir=str(log_dir))


def log_stage(report_to, name: str, group: str, config: dict, estimates: dict[str, dict], log_dir: Path) -> None:
    """One evaluation stage's estimates (value, interval ends, n) in a tracker run of its own:
    named ``name`` (experiment/arm/stage/kind), grouped by ``group`` (the experiment), with
    ``config`` (arm, objective, seed, stage...), finished before the next stage starts."""
    values = _scalars(estimates)
    for tracker in tracker_names(report_to):
        if tracker == "tensorboard":
            writer = _tensorboard_writer(log_dir, name)
            for key, value in values.items():
                writer.add_scalar(key, value, 0)
            writer.add_text("config", json.dumps(config, sort_keys=True, default=str), 0)
            writer.close()
        elif tracker == "wandb":
            run = _wandb_run(log_dir, name, group, config, config.get("kind", "evaluation"))
            run.log(values)
            run.finish()


def log_table(report_to, name: str, group: str, columns: list[str], rows: list[list], log_dir: Path) -> None:
    """A table (the report's pooled estimates) in a tracker run of its own."""
    for tracker in tracker_names(report_to):
        if tracker == "tensorboard":
            writer = _tensorboard_writer(log_dir, name)
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
            writer.add_text("pooled estimates", "\n".join(lines), 0)
            writer.close()
        elif tracker == "wandb":
            import wandb

            run = _wandb_run(log_dir, name, group, {"experiment": group}, "report")
            run.log({"pooled estimates": wandb.Table(columns=columns, data=rows)})
            run.finish()


def finish_training_run() -> None:
    """End the W&B run a training stage left open (transformers starts one only if none is active,
    so the next stage in this process would log into it)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
