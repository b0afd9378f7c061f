"""The run directories a report reads: each one loaded once into a :class:`Run` (its recipe,
training log, final metrics and evaluation outputs, each with the path it came from), labelled
by what its ``recipe.yaml`` records, and checked poolable with the other seeds of its arm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from crrelu_llm import run_files
from crrelu_llm.errors import ReportError
from crrelu_llm.evaluation.results import DRIFT, REWARDS, WINRATE, eval_dir, read
from crrelu_llm.files import read_json
from crrelu_llm.training.recipes import BOOKKEEPING_KEYS

# Keys a pooled run may differ in: the seed, and where it wrote or reported.
POOLABLE = BOOKKEEPING_KEYS | {"seed", "data_seed"}


@dataclass
class Run:
    label: str
    path: Path
    recipe: dict | None = None
    log_history: list[dict] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    rewards: dict | None = None
    winrates: dict[str, dict] = field(default_factory=dict)
    drift: dict | None = None
    patch_report: dict | None = None
    data: dict | None = None  # data_summary.json: what reached training, per split

    @property
    def seed(self):
        """The training seed its recipe records (None for a directory crrelu-llm did not write)."""
        return (self.recipe or {}).get("seed")

    @property
    def name(self) -> str:
        """``arm/run``: the last two components of its path, as every section names a run."""
        return "/".join(self.path.parts[-2:])

    @property
    def arm(self) -> str:
        """What colours this run in every plot: the arm (a label's part before `` beta=``)."""
        return self.label.split(" beta=")[0]


def _trainer_state(path: Path) -> Path | None:
    if (path / "trainer_state.json").exists():
        return path / "trainer_state.json"
    checkpoints = sorted(path.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))
    return checkpoints[-1] if checkpoints else None


def load_run(spec: str) -> Run:
    label, _, location = spec.rpartition("=") if "=" in spec else ("", "", spec)
    path = Path(location)
    if not path.is_dir():
        raise ReportError(f"{path}: no such run directory")
    recipe = yaml.safe_load((path / run_files.RECIPE).read_text()) if (path / run_files.RECIPE).exists() else None
    run = Run(label or _recorded_label(recipe, path), path, recipe)
    state = _trainer_state(path)
    if state:
        run.log_history = read(state).get("log_history", [])
        run.sources["log_history"] = str(state)
    if (path / run_files.FINAL_METRICS).exists():
        run.final = read(path / run_files.FINAL_METRICS)
        run.sources["final"] = str(path / run_files.FINAL_METRICS)
    evaluation = eval_dir(path)
    if REWARDS.in_folder(evaluation).exists():
        run.rewards = read(REWARDS.in_folder(evaluation))
        run.sources["rewards"] = str(REWARDS.in_folder(evaluation))
    # against the run's own start (SFT) first, then the other arms: the same order in every arm
    for file in sorted(WINRATE.files(evaluation), key=lambda f: (not f.stem.endswith("_sft"), f.name)):
        run.winrates[file.stem] = read(file)
        run.sources[file.stem] = str(file)
    if DRIFT.in_folder(evaluation).exists():
        run.drift = read(DRIFT.in_folder(evaluation))
        run.sources["drift"] = str(DRIFT.in_folder(evaluation))
    if (path / run_files.PATCH_REPORT).exists():
        run.patch_report = read(path / run_files.PATCH_REPORT)
    if (path / run_files.DATA_SUMMARY).exists():
        run.data = read(path / run_files.DATA_SUMMARY)
        run.sources["data"] = str(path / run_files.DATA_SUMMARY)
    if not (run.log_history or run.final or run.rewards or run.winrates or run.drift):
        raise ReportError(f"{path}: nothing to report (no trainer_state.json, final_metrics.json or eval/ outputs)")
    return run


def objective(run) -> str:
    """The preference objective a run trained with (its ``reference.json``; dpo when it does not say)."""
    recorded = Path(run.path) / run_files.REFERENCE
    return (read_json(recorded).get("objective") if recorded.exists() else None) or "dpo"


def short(path) -> str:
    """The last two components of a run path, the way the report names baselines."""
    return "/".join(Path(str(path)).parts[-2:]) if path else "?"


def seed_label(label: str, run: Run, runs: list[Run]) -> str:
    """The arm's label, with the run's seed when the arm pools several."""
    return f"{label} seed {run.seed}" if len(runs) > 1 else label


def _recorded_label(recipe: dict | None, path: Path) -> str:
    if not recipe:
        return re.sub(r"-seed\d+$", "", path.name)
    label = recipe.get("activation") or "unpatched"
    return f"{label} beta={recipe['beta']:g}" if "beta" in recipe else f"{label} sft"


def check_poolable(label: str, members: list[Run]) -> None:
    first = members[0]
    for other in members[1:]:
        if first.recipe is None or other.recipe is None:
            continue
        differ = sorted(
            k
            for k in set(first.recipe) | set(other.recipe)
            if k not in POOLABLE and first.recipe.get(k) != other.recipe.get(k)
        )
        if differ:
            shown = ", ".join(f"{k} ({first.recipe.get(k)!r} vs {other.recipe.get(k)!r})" for k in differ[:3])
            raise ReportError(
                f"arm {label!r} would pool {first.path} and {other.path}, which differ in {shown}"
                + (f" and {len(differ) - 3} more keys" if len(differ) > 3 else "")
                + ": only seeds may differ within an arm; give them different LABEL=DIR labels"
            )
