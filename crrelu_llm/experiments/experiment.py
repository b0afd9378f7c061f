"""Experiments: arms x betas x seeds, each stage in its own directory, resumable.

    crrelu-llm experiment --config recipes/experiments/paper_gpt2_hh.yaml
    crrelu-llm demo          # the same runner with the embedded offline recipe (demo.yaml)

An experiment recipe (YAML) says:

- ``task`` (a built-in synthetic task, generated into ``<output_dir>/data``) or ``dataset_name``;
- ``original``: a hub id / path, or ``pretrain`` to build a small GELU model here and train it
  briefly on the task (a competent but imperfect "pretrained original");
- ``arms``: name -> recipe keys (``activation: null`` is the GELU baseline);
- ``sft`` and ``preference`` (old name: ``dpo``): recipe keys shared by every arm (TRL field
  names, as in training recipes); ``objective`` (in ``preference`` or an arm: ``dpo``,
  ``simpo``, ``orpo`` or ``kto``) picks the trainer of
  the preference stage, so an experiment can compare objectives as arms;
- ``betas``, ``seeds``; ``evaluations``: ``rewards``, ``winrate`` (per preference run), ``drift``,
  ``benchmark`` (lm-eval tasks) and ``probe`` (for the original, each arm's patched model at
  step 0, each SFT and each preference run); ``launcher`` (e.g.
  ``accelerate launch --config_file ...``) to run the training stages under accelerate;
- ``on_policy`` (optional): each arm's preference stages train on pairs from its own samples (a
  ``pairs`` stage per arm from its SFT model: ``judge``, ``num_samples``, ``temperature``...,
  :mod:`crrelu_llm.evaluation.onpolicy`), and ``rounds: R`` > 1 makes it iterative DPO: each
  round's pairs come from the previous round's model.

Stages: data, original, per arm ``patched`` (step 0), ``recover`` (optional: ``recover`` holds
``distill`` keys, e.g. ``epsilon_init: calibrate`` and ``swap_steps``, applied to every patched
arm alike, the ReLU control included) and ``sft``, per arm/beta/seed a preference run (``dpo``,
``simpo``..., named after its objective),
their evaluations, then the ``compare`` report. Every stage is a library call in this process
(:func:`crrelu_llm.training.train.run_keys`, :mod:`crrelu_llm.evaluation.evaluate`,
:func:`crrelu_llm.reporting.report.compare`);
only a ``launcher`` turns training stages into commands. A stage is skipped when its
completion file exists; a training stage that was interrupted resumes from its last checkpoint.
Every stage is declared once, with its kind, arm, model and keys, by :mod:`crrelu_llm.experiments.stages`
(paths from :mod:`crrelu_llm.experiments.layout`); this module loads the recipe, checks what
finished (:class:`~crrelu_llm.experiments.ledger.Ledger`) and hands what has to run to
:mod:`crrelu_llm.experiments.executors`, which decides where the stages run (here in turn,
several at once on this node, or as Slurm jobs).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from crrelu_llm.errors import ExperimentError, UsageError, did_you_mean
from crrelu_llm.experiments.declaration import TRAINING_KINDS, Declaration
from crrelu_llm.experiments.evaluations import EVALUATION_KEYS
from crrelu_llm.experiments.executors import ExecutorSettings, check_slurm_keys, run_stages
from crrelu_llm.experiments.layout import RunLayout
from crrelu_llm.experiments.ledger import Ledger
from crrelu_llm.experiments.stages import declare, recover_keys
from crrelu_llm.files import writable_dir, write_json
from crrelu_llm.trackers import EVIDENCE_TRACKERS, check_trackers, tracker_names
from crrelu_llm.training.arms import check_kernels
from crrelu_llm.training.objectives import PREFERENCE_OBJECTIVES
from crrelu_llm.training.recipes import check_recipe_keys, recipe_from_dict

logger = logging.getLogger("crrelu_llm.experiment")

DEMO_RECIPE = Path(__file__).parents[1] / "demo.yaml"
KEYS = {
    "name",
    "output_dir",
    "task",
    "dataset_name",
    "original",
    "pretrain",
    "arms",
    "sft",
    "preference",
    "dpo",  # the old name of preference
    "betas",
    "seeds",
    "evaluations",
    "launcher",
    "baseline_arm",
    "recover",
    "slurm",
    "reproducible",
    "on_policy",
}


@dataclass
class Experiment:
    name: str
    output_dir: Path
    arms: dict[str, dict]
    sft: dict | None
    preference: dict  # recipe keys shared by the preference stages (of whichever objective)
    betas: list[float]
    seeds: list[int]
    evaluations: dict = field(default_factory=dict)
    task: dict | None = None
    dataset_name: str | None = None
    original: str | None = None
    pretrain: dict | None = None
    launcher: str | None = None
    baseline_arm: str = "gelu"
    recover: dict | None = None
    slurm: dict = field(default_factory=dict)  # submitit SlurmExecutor settings, for --executor slurm
    objectives: dict[str, str] = field(default_factory=dict)  # arm -> dpo, simpo, orpo or kto (default dpo)
    on_policy: dict | None = None  # pairs from each arm's own samples (crrelu_llm.evaluation.onpolicy), and rounds
    factors: dict[str, dict[str, str]] = field(default_factory=dict)  # arm -> {factor: level}: a 2x2 design
    stage_log: list[dict] = field(default_factory=list)  # what ran and what was skipped, for summary.json
    source: str = "experiment recipe"

    def trackers(self, arm: str | None = None) -> list[str]:
        """The trackers an arm's recipe keys name (its SFT and preference keys; every arm's without
        one) that also receive the evaluations' estimates."""
        names = set()
        for keys in [self.arms[arm]] if arm in self.arms else list(self.arms.values()):
            for shared in (self.sft, self.preference):
                names |= set(tracker_names({**(shared or {}), **keys}.get("report_to")))
        return sorted(names & set(EVIDENCE_TRACKERS))


def load_experiment(path: str | Path, output_dir: str | None = None, overrides: dict | None = None) -> Experiment:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ExperimentError(f"experiment recipe {path} does not exist") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path} must be a YAML mapping")
    raw.update(overrides or {})
    _old_preference_name(path, raw)
    unknown = set(raw) - KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ExperimentError(f"{path}: unknown key {key!r}" + did_you_mean(key, sorted(KEYS)))
    for key in ("name", "arms", "preference", "betas", "seeds"):
        if key not in raw:
            raise ExperimentError(f"{path}: {key!r} is required")
    if bool(raw.get("task")) == bool(raw.get("dataset_name")):
        raise ExperimentError(f"{path}: give exactly one of 'task' (built-in synthetic data) or 'dataset_name'")
    if bool(raw.get("original")) == bool(raw.get("pretrain")):
        raise ExperimentError(f"{path}: give exactly one of 'original' (a model) or 'pretrain' (build one here)")
    _check_evaluations(path, raw.get("evaluations") or {})
    baseline = raw.get("baseline_arm", "gelu")
    if baseline not in raw["arms"]:
        raise ExperimentError(f"{path}: baseline_arm {baseline!r} is not one of the arms {sorted(raw['arms'])}")
    stage_keys = {"model_name_or_path": "x", "dataset_name": "x", "output_dir": "x"}
    run_keys = {"beta": 0.1, "seed": 0, "reference": "policy"}
    if not isinstance(raw["preference"], dict):
        raise ExperimentError(f"{path}: 'preference' must be a mapping of recipe keys shared by the preference stages")
    objectives = {}
    for arm, keys in raw["arms"].items():  # every stage's keys, checked before anything runs
        if not isinstance(keys, dict):
            raise ExperimentError(f"{path}: arm {arm!r} must be a mapping of recipe keys (e.g. activation: crrelu)")
        objectives[arm] = objective = keys.get("objective", raw["preference"].get("objective", "dpo"))
        if objective not in PREFERENCE_OBJECTIVES:
            raise ExperimentError(
                f"{path}: arm {arm!r}: objective must be one of {', '.join(PREFERENCE_OBJECTIVES)}, "
                f"got {objective!r}" + did_you_mean(str(objective), PREFERENCE_OBJECTIVES)
            )
        keys = {k: v for k, v in keys.items() if k not in ("objective", "factors")}
        preference = {k: v for k, v in raw["preference"].items() if k != "objective"}
        for command, shared in (("sft", raw.get("sft")), (objective, preference)):
            if shared is not None:
                extra = run_keys if command != "sft" else {}
                check_recipe_keys({**shared, **keys, **stage_keys, **extra}, command, f"{path} ({arm}, {command})")
    for stage in ("sft", "preference", "recover"):  # kernel options: every arm alike, and no patched one
        shared = raw.get(stage) if isinstance(raw.get(stage), dict) else {}
        check_kernels({arm: {**shared, **keys} for arm, keys in raw["arms"].items()}, f"{path} ({stage})")
        for keys in raw["arms"].values():  # a tracker missing stops the experiment before its first stage
            check_trackers({**shared, **keys}.get("report_to"), f"{path} ({stage})")
    if raw.get("recover") is not None:
        if not isinstance(raw["recover"], dict):
            raise ExperimentError(f"{path}: 'recover' must be a mapping of distill recipe keys (e.g. max_steps: 200)")
        for arm, keys in raw["arms"].items():
            if keys.get("activation"):
                check_recipe_keys(
                    {**recover_keys(raw["recover"], keys), **stage_keys}, "distill", f"{path} ({arm}, recover)"
                )
    if raw.get("slurm") is not None:
        check_slurm_keys(path, raw["slurm"])
    if raw.get("on_policy") is not None:
        check_on_policy(path, raw["on_policy"])
    if raw.get("pretrain"):
        check_recipe_keys({**raw["pretrain"].get("train", {}), **stage_keys}, "sft", f"{path} (pretrain)")
    out = Path(output_dir or raw.get("output_dir") or f"runs/{raw['name']}")
    exp = Experiment(
        name=raw["name"],
        output_dir=out,
        arms={
            arm: {k: v for k, v in keys.items() if k not in ("objective", "factors")}
            for arm, keys in raw["arms"].items()
        },
        factors=check_factors(path, raw["arms"], baseline),
        objectives=objectives,
        sft=raw.get("sft"),
        preference={k: v for k, v in raw["preference"].items() if k != "objective"},
        betas=[float(b) for b in raw["betas"]],
        seeds=[int(s) for s in raw["seeds"]],
        evaluations=raw.get("evaluations") or {},
        task=raw.get("task"),
        dataset_name=raw.get("dataset_name"),
        original=raw.get("original"),
        pretrain=raw.get("pretrain"),
        launcher=raw.get("launcher"),
        baseline_arm=baseline,
        recover=raw.get("recover"),
        slurm=raw.get("slurm") or {},
        on_policy=raw.get("on_policy"),
    )
    exp.source = str(path)
    return exp


def _old_preference_name(path, raw: dict) -> None:
    """``dpo``, the key's name from before an arm could train SimPO, ORPO or KTO, read as ``preference``."""
    if "dpo" in raw:
        if "preference" in raw:
            raise ExperimentError(f"{path}: 'dpo' is the old name of 'preference': keep one of them")
        raw["preference"] = raw.pop("dpo")


def check_stages(exp: Experiment, declaration: Declaration, on_this_machine: bool = True) -> dict:
    """Parse every training stage's keys as the stage itself will (the recipe dataclasses and
    their checks), so a recipe that cannot run is refused before its first stage runs. Not
    ``on_this_machine`` (``--plan``), a recipe for GPUs is checked as if they were there.
    Returns each stage's parsed training arguments by name (``--plan`` estimates from them)."""
    from crrelu_llm.training.recipes import accelerator_available

    neutral = {} if on_this_machine or accelerator_available() else {"use_cpu": True}
    config_logger = logging.getLogger("crrelu_llm.config")
    level, parsed, by_stage = config_logger.level, {}, {}
    config_logger.setLevel(logging.ERROR)  # the CPU-only note would repeat once per stage
    try:
        for spec in declaration.by_kind(*TRAINING_KINDS, "patch"):
            if spec.external:
                continue
            keys = {k: v for k, v in spec.keys.items() if k != "command"}
            command = spec.command or spec.keys.get(
                "command", "distill" if spec.kind == "recover" else "sft" if spec.kind == "original" else spec.kind
            )
            text = json.dumps([command, keys], sort_keys=True, default=str)
            if text not in parsed:
                keys = {**keys, **neutral, "output_dir": str(spec.clear or spec.model)}
                parsed[text] = recipe_from_dict(command, keys, source=f"{exp.source} (stage {spec.name})")[2]
            by_stage[spec.name] = parsed[text]
    finally:
        config_logger.setLevel(level)
    return by_stage


def check_factors(path, arms: dict, baseline: str) -> dict[str, dict[str, str]]:
    """``factors: {base: gelu, correction: off}`` per arm: a 2x2 design, every arm in one cell and
    every cell filled once, the baseline arm at the reference level of both. {} without factors."""
    declared = {arm: keys.get("factors") for arm, keys in arms.items()}
    if not any(declared.values()):
        return {}
    fix = "give every arm factors of the same two names, two levels each, one arm per combination"
    if not all(isinstance(f, dict) and len(f) == 2 for f in declared.values()):
        missing = next(arm for arm, f in declared.items() if not (isinstance(f, dict) and len(f) == 2))
        raise ExperimentError(
            f"{path}: arm {missing!r}: factors must be a mapping of two factors, e.g. "
            f"{{base: gelu, correction: off}}; {fix}"
        )
    names = {tuple(sorted(f)) for f in declared.values()}
    cells = [tuple(str(f[n]) for n in sorted(f)) for f in declared.values()]
    levels = [sorted({c[i] for c in cells}) for i in range(2)]
    if len(names) != 1 or len(set(cells)) != len(cells) or len(cells) != 4 or any(len(lv) != 2 for lv in levels):
        raise ExperimentError(f"{path}: the arms' factors do not make a 2x2 design ({sorted(set(cells))}); {fix}")
    return {arm: {k: str(v) for k, v in f.items()} for arm, f in declared.items()}


def check_on_policy(path, spec) -> None:
    """``on_policy``: a judge, the :class:`~crrelu_llm.evaluation.onpolicy.PairSettings` keys, and
    ``rounds`` (each round's pairs come from the previous round's model); checked in one line."""
    import dataclasses

    from crrelu_llm.evaluation.judges import judge_name
    from crrelu_llm.evaluation.onpolicy import PairSettings

    known = {f.name for f in dataclasses.fields(PairSettings)} | {"judge", "rounds", "generate_with"}
    if not isinstance(spec, dict) or "judge" not in spec:
        raise ExperimentError(
            f"{path}: 'on_policy' must be a mapping with a 'judge' (e.g. {{judge: rule:arithmetic, num_samples: 4}}}})"
        )
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ExperimentError(
            f"{path}: on_policy has unknown key {unknown[0]!r}" + did_you_mean(unknown[0], sorted(known))
        )
    rounds = spec.get("rounds", 1)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ExperimentError(f"{path}: on_policy.rounds must be a whole number of at least 1, got {rounds!r}")
    try:
        judge_name(spec["judge"])
        PairSettings(**{k: v for k, v in spec.items() if k not in ("judge", "rounds", "generate_with")}).check()
        if spec.get("generate_with") is not None:
            from crrelu_llm.evaluation.served import parse_served

            parse_served(spec["generate_with"])
    except (UsageError, TypeError) as err:
        raise ExperimentError(f"{path}: on_policy: {err}") from None


def _check_evaluations(path, evaluations) -> None:
    if not isinstance(evaluations, dict):
        raise ExperimentError(f"{path}: 'evaluations' must be a mapping such as {{drift: {{max_samples: 100}}}}")
    for kind, settings in evaluations.items():
        if kind not in EVALUATION_KEYS:
            raise ExperimentError(
                f"{path}: unknown evaluation {kind!r}"
                + (did_you_mean(kind, sorted(EVALUATION_KEYS)) or f"; known: {', '.join(sorted(EVALUATION_KEYS))}")
            )
        if not isinstance(settings, dict):
            raise ExperimentError(f"{path}: evaluations.{kind} must be a mapping of its settings ({{}} for defaults)")
        unknown = sorted(set(settings) - EVALUATION_KEYS[kind])
        if unknown:
            raise ExperimentError(
                f"{path}: evaluations.{kind} has unknown key {unknown[0]!r}; known: "
                f"{', '.join(sorted(EVALUATION_KEYS[kind]))}"
            )
    if "winrate" in evaluations and "judge" not in evaluations["winrate"]:
        raise ExperimentError(f"{path}: evaluations.winrate needs a 'judge' (e.g. rule:arithmetic)")
    served = (evaluations.get("winrate") or {}).get("generate_with")
    if served is not None:
        from crrelu_llm.evaluation.served import parse_served

        try:
            parse_served(served)
        except UsageError as err:
            raise ExperimentError(f"{path}: evaluations.winrate.generate_with: {err}") from None
    if "benchmark" in evaluations and not evaluations["benchmark"].get("tasks"):
        raise ExperimentError(f"{path}: evaluations.benchmark needs 'tasks' (e.g. [crrelu_arith_mc])")


def refuse_changed(exp: Experiment, assessed: dict[str, dict]) -> None:
    changed = [f"{name} ({entry['changes']})" for name, entry in assessed.items() if entry["status"] == "changed"]
    if changed:
        shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise ExperimentError(
            f"{exp.output_dir}: {len(changed)} finished stage(s) were computed from other "
            f"inputs: {shown}. Pass --rerun-changed to recompute them and what depends on them, "
            "or choose another --out"
        )


def refuse_old_run_names(declaration: Declaration) -> None:
    """A SimPO, ORPO or KTO run that an earlier version kept as ``dpo-beta<B>-seed<S>``: named, with
    the move that keeps it, rather than trained again beside it."""
    for run in declaration.by_kind("preference"):
        new = Path(run.model)
        old = RunLayout.before_objective_names(new, run.command)
        if old != new and old.is_dir() and not new.exists():
            raise ExperimentError(
                f"{old}: a {run.command} run under the name earlier versions gave it; preference runs are now "
                f"named after their objective: mv {old} {new}, then run again with --rerun-changed to "
                "recompute its evaluations (or choose another --out)"
            )


def run_experiment(exp: Experiment, rerun_changed: bool = False, executor: ExecutorSettings | None = None) -> dict:
    """Run (or skip, when done and unchanged) every stage of ``exp``; the summary also goes to
    ``summary.json``. Stages whose inputs changed since they ran are refused before anything
    runs, naming the changes, unless ``rerun_changed`` (then they and their dependents rerun).
    ``executor`` says where the stages run (:mod:`crrelu_llm.experiments.executors`; default: here, in turn)."""
    start = time.time()
    layout = RunLayout(exp.output_dir)
    executor = executor or ExecutorSettings()
    executor.slurm = {**exp.slurm, **executor.slurm}
    executor.check(layout.jobs)
    declaration = declare(exp)
    check_stages(exp, declaration)
    refuse_old_run_names(declaration)
    ledger = Ledger(exp.output_dir, rerun_changed)
    assessed = ledger.assess(declaration.stages)
    if not rerun_changed:
        refuse_changed(exp, assessed)
    writable_dir(exp.output_dir)
    run_stages(ledger.pending(declaration.stages, assessed), ledger.finish, executor, layout.jobs)
    exp.stage_log = ledger.log
    from crrelu_llm.environment import environment
    from crrelu_llm.experiments.evidence import record
    from crrelu_llm.reporting.summary import readings, summary_view

    evidence = record(exp, declaration, time.time() - start, exp.stage_log)  # report.json: computed once
    summary = summary_view(evidence)
    summary["reading"] = readings(summary, exp.baseline_arm)
    write_json(layout.summary, {"stages": exp.stage_log, "environment": environment(), **summary})
    return summary
