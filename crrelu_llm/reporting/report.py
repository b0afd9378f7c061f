"""``crrelu-llm compare``: a report over run directories (arms, optionally several seeds each).

Reads from each run directory: ``trainer_state.json`` (training curves, epsilon per layer),
``final_metrics.json``, ``reference.json``, and the evaluation outputs under ``eval/``
(``rewards.json``, ``winrate*.json``, ``drift.json``). Writes ``report.md``, ``report.json`` and
PNG plots. Every number in the report carries the path of the file it was read from.

Runs are grouped into arms by what they record in ``recipe.yaml`` (the activation, and beta for
DPO), never by directory names: ``crrelu beta=0.1`` holds every run of that recipe, whatever its
seed. ``LABEL=DIR`` names an arm explicitly. Runs pooled into one arm must be the same recipe
but for the seed; anything else is refused with the keys that differ. A directory without a
``recipe.yaml`` (not written by crrelu-llm) is labelled by its name.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from crrelu_llm import run_files
from crrelu_llm.errors import ReportError
from crrelu_llm.evaluation.evaluate import eval_dir
from crrelu_llm.files import read_json, writable_dir, write_json, write_text_atomic
from crrelu_llm.reporting import estimates, figures, markdown, report_stages
from crrelu_llm.training.recipes import BOOKKEEPING_KEYS

TRAIN_CURVES = ("loss", "rewards/accuracies", "rewards/margins")


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
        run.log_history = report_stages.read_result(state).get("log_history", [])
        run.sources["log_history"] = str(state)
    if (path / run_files.FINAL_METRICS).exists():
        run.final = report_stages.read_result(path / run_files.FINAL_METRICS)
        run.sources["final"] = str(path / run_files.FINAL_METRICS)
    evaluation = eval_dir(path)
    if (evaluation / "rewards.json").exists():
        run.rewards = report_stages.read_result(evaluation / "rewards.json")
        run.sources["rewards"] = str(evaluation / "rewards.json")
    # against the run's own start (SFT) first, then the other arms: the same order in every arm
    for file in sorted(evaluation.glob("winrate*.json"), key=lambda f: (not f.stem.endswith("_sft"), f.name)):
        run.winrates[file.stem] = report_stages.read_result(file)
        run.sources[file.stem] = str(file)
    if (evaluation / "drift.json").exists():
        run.drift = report_stages.read_result(evaluation / "drift.json")
        run.sources["drift"] = str(evaluation / "drift.json")
    if (path / run_files.PATCH_REPORT).exists():
        run.patch_report = report_stages.read_result(path / run_files.PATCH_REPORT)
    if (path / run_files.DATA_SUMMARY).exists():
        run.data = report_stages.read_result(path / run_files.DATA_SUMMARY)
        run.sources["data"] = str(path / run_files.DATA_SUMMARY)
    if not (run.log_history or run.final or run.rewards or run.winrates or run.drift):
        raise ReportError(f"{path}: nothing to report (no trainer_state.json, final_metrics.json or eval/ outputs)")
    return run


def _series(run: Run, key: str) -> tuple[list[int], list[float]]:
    points = [(e["step"], e[key]) for e in run.log_history if key in e and "step" in e]
    return [p[0] for p in points], [p[1] for p in points]


def _plots(arms: dict[str, list[Run]], out: Path, colours: dict[str, str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if any(r.log_history for runs in arms.values() for r in runs):
        fig, axes = plt.subplots(1, len(TRAIN_CURVES), figsize=(5 * len(TRAIN_CURVES), 3.6), sharex=True)
        for ax, key in zip(axes, TRAIN_CURVES):
            for label, runs in arms.items():
                for i, run in enumerate(runs):
                    x, y = _series(run, key)
                    if x:  # one shade per seed, each named in the legend
                        ax.plot(x, y, color=colours[run.arm], linestyle=figures.line_style("DPO"),
                                alpha=max(0.35, 0.95 - 0.25 * i), label=_seed_label(label, run, runs))
            ax.set_title(key)
            ax.set_xlabel("training step")
            ax.set_ylabel(key)
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=110)
        plt.close(fig)
        files.append("training_curves.png")
    eps_arms = {_seed_label(label, run, runs): run for label, runs in arms.items() for run in runs
                if any(k.startswith("epsilon/") and k[8:].isdigit() for e in run.log_history for k in e)}
    if eps_arms:
        fig, axes = plt.subplots(1, len(eps_arms), figsize=(5 * len(eps_arms), 3.6), squeeze=False)
        for ax, (label, run) in zip(axes[0], eps_arms.items()):
            keys = sorted({k for e in run.log_history for k in e if k.startswith("epsilon/") and k[8:].isdigit()})
            start = figures.starting_epsilons(run)
            for key in keys:
                x, y = _series(run, key)
                first = start.get(key, start.get("*"))
                if first is not None:  # the eps this run started from, at step 0
                    x, y = [0, *x], [first, *y]
                ax.plot(x, y, marker=".", label=f"block {int(key[8:])}")
            ax.set_ylabel("epsilon")
            ax.set_title(f"epsilon per block: {label}" + (" (from its start)" if start else ""), fontsize=9)
            ax.set_xlabel("training step (0: the eps it started from)" if start else "training step")
            if len(keys) <= 12:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "epsilon.png", dpi=110)
        plt.close(fig)
        files.append("epsilon.png")
    by_arm = _accuracy_by_training_beta(arms)
    if by_arm:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        betas = sorted({p[0] for points in by_arm.values() for p in points})
        slots = [(arm, seed) for arm, points in by_arm.items() for seed in dict.fromkeys(p[3] for p in points)]
        spread = 0.6 / max(len(slots), 1)
        for arm, points in by_arm.items():
            for seed in dict.fromkeys(p[3] for p in points):
                mine = sorted(p for p in points if p[3] == seed)
                i = slots.index((arm, seed))
                # one slot per training beta, every (arm, seed) side by side inside it
                x = [betas.index(p[0]) + spread * (i - (len(slots) - 1) / 2) for p in mine]
                y = [p[1] for p in mine]
                err = [[p[1] - p[2][0] for p in mine], [p[2][1] - p[1] for p in mine]]
                ax.errorbar(x, y, yerr=err, marker="o", linestyle="-" if len(mine) > 1 else "none", capsize=3,
                            color=colours[arm], alpha=max(0.4, 1 - 0.3 * [s for a, s in slots if a == arm].index(seed)),
                            label=f"{arm} seed {seed}" if seed is not None else arm)
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlim(-0.6, len(betas) - 0.4)
        ax.set_xlabel("training beta (one point per DPO run: arm and seed)")
        ax.set_ylabel("reward accuracy, 95% Wilson")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "reward_accuracy.png", dpi=110)
        plt.close(fig)
        files.append("reward_accuracy.png")
    bars = [(f"{_seed_label(label, run, runs)} ({objective(run).upper()}) vs {_short(w.get('baseline'))}", run.arm,
             _restated(w["stats"])) for label, runs in arms.items() for run in runs for w in run.winrates.values()]
    if bars:
        fig = figures.win_rate_figure(bars, colours)
        fig.savefig(out / "win_rates.png", dpi=110)
        plt.close(fig)
        files.append("win_rates.png")
    return files


def objective(run) -> str:
    """The preference objective a run trained with (its ``reference.json``; dpo when it does not say)."""
    recorded = Path(run.path) / run_files.REFERENCE
    return (read_json(recorded).get("objective") if recorded.exists() else None) or "dpo"


def _short(path) -> str:
    """The last two components of a run path, the way the report names baselines."""
    return "/".join(Path(str(path)).parts[-2:]) if path else "?"


def _seed_label(label: str, run: Run, runs: list[Run]) -> str:
    """The arm's label, with the run's seed when the arm pools several."""
    return f"{label} seed {run.seed}" if len(runs) > 1 else label


def _restated(stats: dict) -> dict:
    """A win-rate result's stats with the interval of :func:`crrelu_llm.stats.win_rate_estimate`
    (recomputed from the counts, so a result written before it is plotted the same way)."""
    from crrelu_llm.stats import win_rate_estimate

    return {**stats, "interval": win_rate_estimate(stats["wins"], stats["ties"], stats["losses"]).interval}


def _accuracy_by_training_beta(arms: dict[str, list[Run]]) -> dict[str, list]:
    """arm -> [(training beta, reward accuracy, interval, seed)] over every run whose rewards were
    evaluated and whose training beta is known."""
    points: dict[str, list] = {}
    for runs in arms.values():
        for run in runs:
            if not run.rewards or "accuracy" not in run.rewards:
                continue
            beta = run.rewards.get("training_beta") or (run.recipe or {}).get("beta")
            if beta is None:
                continue
            points.setdefault(run.arm, []).append((beta, run.rewards["accuracy"], run.rewards["accuracy_interval"],
                                                   run.seed))
    return points


def _recorded_label(recipe: dict | None, path: Path) -> str:
    if not recipe:
        return re.sub(r"-seed\d+$", "", path.name)
    label = recipe.get("activation") or "unpatched"
    return f"{label} beta={recipe['beta']:g}" if "beta" in recipe else f"{label} sft"


def _check_poolable(label: str, members: list[Run]) -> None:
    first = members[0]
    for other in members[1:]:
        if first.recipe is None or other.recipe is None:
            continue
        differ = sorted(k for k in set(first.recipe) | set(other.recipe)
                        if k not in POOLABLE and first.recipe.get(k) != other.recipe.get(k))
        if differ:
            shown = ", ".join(f"{k} ({first.recipe.get(k)!r} vs {other.recipe.get(k)!r})" for k in differ[:3])
            raise ReportError(f"arm {label!r} would pool {first.path} and {other.path}, which differ in {shown}"
                              + (f" and {len(differ) - 3} more keys" if len(differ) > 3 else "")
                              + ": only seeds may differ within an arm; give them different LABEL=DIR labels")


def compare(specs: list[str], out: Path, step0_drift: dict[str, dict | None] | None = None,
            stages: dict[str, dict[str, Path]] | None = None, eval_dirs: dict[str, Path] | None = None,
            baseline: str | None = None, pairs: list[dict] | None = None, factorial: dict | None = None) -> dict:
    """Write report.md, report.json and plots for the runs; return the report dict.
    ``step0_drift`` maps an arm label to its step-0 drift (``{"stage", "from"}``; None for an
    unpatched arm, whose step 0 is the original): the experiment runner measures the swap's own
    damage there. Without it each run's own drift is shown, named as that run's. ``stages``
    maps an arm to ``{stage: model directory}`` (step 0, SFT, DPO...) for the help-or-harm table
    of drift, benchmarks and probes; by default, each run given is a stage of its arm.
    ``baseline``: the arm every other is compared with (default: the first). ``pairs``: the
    on-policy pairs stages' records (``{"arm", "stage", "from"}``), shown with their counts.

    Example:
        >>> compare(["gelu=runs/gelu/dpo", "crrelu=runs/crrelu/dpo"], Path("report"))  # doctest: +SKIP
    """
    if not specs:
        raise ReportError("give at least one run directory")
    runs = [load_run(s) for s in specs]
    arms: dict[str, list[Run]] = {}
    for run in runs:
        arms.setdefault(run.label, []).append(run)
    for label, members in arms.items():
        _check_poolable(label, members)
    writable_dir(Path(out))
    report = {"arms": {}, "plots": [], "factorial": factorial,
              "pairs": [{**p, **report_stages.read_result(Path(p["from"]))} for p in pairs or []]}
    for label, members in arms.items():
        report["arms"][label] = _arm_entry(label, members, step0_drift)
    baseline = baseline if baseline in arms else next(iter(arms))
    report["baseline"] = baseline
    report["paired_tests"] = _paired_over_seeds(arms, baseline)
    report["reward_accuracy_vs_baseline"] = {
        label: found for label, members in arms.items() if label != baseline
        and (found := estimates.paired_accuracies(_rewards_by_seed(members), _rewards_by_seed(arms[baseline])))}
    if stages is None:
        stages = {label: {r.path.name: r.path for r in members} for label, members in arms.items()}
    report["stages"] = report_stages.collect(stages, eval_dirs)
    colours = figures.arm_colours([r.arm for r in runs] + list(stages))
    report["colours"] = colours
    report["plots"] = _plots(arms, out, colours)
    probe = figures.probe_plot(report["stages"], out, colours)
    if probe:
        report["plots"].append(probe)
    write_json(out / "report.json", report)
    write_text_atomic(out / "report.md", markdown.render(report))
    return report


def _rewards_by_seed(members: list[Run]) -> dict:
    return {r.seed: r.rewards for r in members if r.rewards and "accuracy" in r.rewards}


def _paired_over_seeds(arms: dict[str, list[Run]], baseline: str) -> list[dict]:
    """Each arm against the baseline over the seeds both have (:func:`estimates.over_seeds`): our
    reward accuracy where both arms have it, else TRL's, named as such."""
    def values(members):
        return ({r.seed: r.rewards["accuracy"] for r in members if r.rewards and "accuracy" in r.rewards},
                {r.seed: float(r.final["eval_rewards/accuracies"]) for r in members
                 if "eval_rewards/accuracies" in r.final})

    return [t for label, members in arms.items() if label != baseline
            and (t := estimates.over_seeds(label, values(members), baseline, values(arms[baseline])))]


def _comparison_key(name: str) -> str:
    """A win-rate result's name without the seed of the baseline it was judged against, so that
    every seed's result against 'the gelu arm' (its own seed's gelu run) is one comparison."""
    return re.sub(r"-seed\d+$", "", name)


def _arm_entry(label: str, members: list[Run], step0_drift: dict | None) -> dict:
    """What the report says of one arm: every seed's result, and the pooled one; every number
    names the run (stage) and file it came from."""
    entry = {"runs": [str(r.path) for r in members], "seeds": [r.seed for r in members],
             "sources": [r.sources for r in members], "objective": objective(members[0])}
    accs = [(r, r.final["eval_rewards/accuracies"]) for r in members if "eval_rewards/accuracies" in r.final]
    if accs:  # TRL's own: a mean of batch means in which a tie counts as wrong; kept for reference
        values = [float(a) for _, a in accs]
        entry["trl_eval_reward_accuracy"] = {
            "values": values, "mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "stage": [r.name for r, _ in accs], "from": [r.sources.get("final") for r, _ in accs]}
    ours = [r for r in members if r.rewards and "accuracy" in r.rewards]
    if ours:
        pooled = estimates.accuracies([{"seed": r.seed, "stage": r.name, "from": r.sources["rewards"],
                                        "rewards": r.rewards} for r in ours])
        values = [r.rewards["accuracy"] for r in ours]
        entry["reward_accuracy"] = {
            "values": values, "mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1
            else 0.0, "n": [r.rewards["n"] for r in ours], **pooled}
        entry["rewards"] = [{k: r.rewards.get(k) for k in (
            "n", "accuracy", "accuracy_interval", "ties", "training_beta", "margins_per_evaluation_beta",
            "preference_accuracy", "objective", "implicit_reward")} | {"seed": r.seed, "stage": r.name,
                                                                       "from": r.sources["rewards"]} for r in ours]
    comparisons: dict[str, list] = {}
    for r in members:
        for name, w in r.winrates.items():
            comparisons.setdefault(_comparison_key(name), []).append(
                {"seed": r.seed, "stage": r.name, "from": r.sources[name], "judge": w.get("judge"),
                 "baseline": w.get("baseline"), "stats": w["stats"]})
    if comparisons:
        entry["win_rates"] = {}
        for key, results in comparisons.items():
            group = estimates.win_rates(results)
            for seed_entry, result in zip(group["per_seed"], results):  # the lengths and consistency, per seed
                seed_entry.update({k: result["stats"].get(k) for k in (
                    "position_consistency", "length_model", "length_baseline")})
            baselines = list(dict.fromkeys(_short(r["baseline"]) for r in results))
            shown = baselines[0] if len(baselines) == 1 else f"{_comparison_key(baselines[0])} (each seed's own)"
            entry["win_rates"][key] = {"judge": results[0]["judge"], "baseline": shown, **group}
    if step0_drift is not None:  # the swap's own damage: the arm's step-0 model, never a later stage's
        found = step0_drift.get(label)
        if found:
            entry["drift"] = [{**report_stages.read_result(Path(found["from"])), "stage": "step 0",
                               "from": found["from"]}]
        elif _patched(members[0]):
            entry["drift_note"] = ("step 0 (the patched original) was not evaluated: add `drift:` to the "
                                   "recipe's evaluations to measure the swap's own damage")
        else:
            entry["drift_note"] = "step 0 is the unpatched original: no swap to measure"
    elif any(r.drift for r in members):
        entry["drift"] = [{**r.drift, "stage": r.name, "from": r.sources["drift"]} for r in members if r.drift]
    counted = [r for r in members if r.data and r.data.get("splits")]
    if counted:
        entry["data"] = [{"source": r.data.get("source"), "splits": r.data["splits"], "seed": r.seed,
                          "stage": r.name, "from": r.sources["data"]} for r in counted]
    entry["epsilon"] = [e for e in (_epsilons(r) for r in members) if e]
    return entry


def _patched(run: Run) -> bool:
    """Whether the run's model has a patched activation (its recipe or patch record says so)."""
    return bool((run.recipe or {}).get("activation") or (run.patch_report or {}).get("activation"))


def _epsilons(run: Run) -> dict | None:
    """The run's activation parameters: where it started (the calibrated values, or epsilon_init)
    and where it ended (``final_epsilon/*``), per block."""
    if not _patched(run):
        return None
    final = {k[len("final_"):]: v for k, v in run.final.items() if k.startswith("final_epsilon/")}
    start = figures.starting_epsilons(run)
    if not final and not start:
        return None
    return {"seed": run.seed, "stage": run.name, "from": run.sources.get("final"), "final": final,
            "start": start, "calibrated_from": _calibrated_at(run)}


def _calibrated_at(run: Run) -> dict | None:
    """The calibrated eps per block, and the patch record they were read from: the run's own, or
    (a run that started from an already patched model) its start's."""
    from crrelu_llm.patching.discovery import layer_index

    records = [run.path / run_files.PATCH_REPORT]
    start = (run.recipe or {}).get("model_name_or_path")
    if (run.patch_report or {}).get("already_patched") and start:
        records.append(Path(str(start)) / run_files.PATCH_REPORT)
    for record in records:
        values = report_stages.read_result(record).get("calibrated_epsilons") if record.exists() else None
        if values:
            return {"from": str(record), "values": {f"{layer_index(p):02d}": v for p, v in values.items()
                                                    if layer_index(p) is not None}}
    return None


def compare_experiment(declaration, baseline_arm: str, factors: dict | None = None) -> dict:
    """The report of an experiment: every DPO run under its arm (``arm beta=B`` when the
    experiment trains several betas), the KL column from each arm's step-0 model, and the
    help-or-harm table from every model the declaration names."""
    from crrelu_llm.reporting.summary import step0_drift

    several_betas = len({run.beta for run in declaration.dpo_runs}) > 1

    def label(arm, beta):
        return f"{arm} beta={beta:g}" if several_betas else arm

    specs = [f"{label(run.arm, run.beta)}={run.model}" for run in declaration.dpo_runs]
    drift = {label(run.arm, run.beta): step0_drift(declaration, run.arm) for run in declaration.dpo_runs}
    pairs = [{"arm": s.arm, "stage": s.name, "from": str(s.done)} for s in declaration.by_kind("pairs")
             if s.done.exists()]
    two_by_two = None
    if factors:
        from crrelu_llm.reporting import factorial

        two_by_two = factorial.read(declaration, factors, baseline_arm,
                                    report_stages.collect(declaration.models(), declaration.eval_dirs()))
    return compare(specs, declaration.layout.report, step0_drift=drift, stages=declaration.models(),
                   eval_dirs=declaration.eval_dirs(), baseline=label(baseline_arm, declaration.dpo_runs[0].beta),
                   pairs=pairs, factorial=two_by_two)
