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
from pathlib import Path

from crrelu_llm import run_files
from crrelu_llm.errors import ReportError
from crrelu_llm.evaluation.results import read
from crrelu_llm.files import writable_dir, write_json, write_text_atomic
from crrelu_llm.reporting import estimates, figures, markdown, report_stages
from crrelu_llm.reporting.runs import Run, check_poolable, load_run, objective, short


def compare(
    specs: list[str],
    out: Path,
    step0_drift: dict[str, dict | None] | None = None,
    stages: dict[str, dict[str, Path]] | None = None,
    eval_dirs: dict[str, Path] | None = None,
    baseline: str | None = None,
    pairs: list[dict] | None = None,
    factorial: dict | None = None,
    starts: dict | None = None,
    stage_rows: list[dict] | None = None,
    write: bool = True,
) -> dict:
    """Write report.md, report.json and plots for the runs; return the report dict.
    ``step0_drift`` maps an arm label to its step-0 drift (``{"stage", "from"}``; None for an
    unpatched arm, whose step 0 is the original): the experiment runner measures the swap's own
    damage there. Without it each run's own drift is shown, named as that run's. ``stages``
    maps an arm to ``{stage: model directory}`` (step 0, SFT, DPO...) for the help-or-harm table
    of drift, benchmarks and probes; by default, each run given is a stage of its arm.
    ``baseline``: the arm every other is compared with (default: the first). ``pairs``: the
    on-policy pairs stages' records (``{"arm", "stage", "from"}``), shown with their counts.
    ``starts``: ``(arm, stage) -> the stage it started from``, for the benchmark contrasts within an
    arm; ``stage_rows``: the help-or-harm rows when the caller has read them already. ``write``:
    False leaves report.json and report.md to the caller (an experiment adds its own parts first).

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
        check_poolable(label, members)
    writable_dir(Path(out))
    report = {
        "arms": {},
        "plots": [],
        "factorial": factorial,
        "pairs": [{**p, **read(Path(p["from"]))} for p in pairs or []],
    }
    for label, members in arms.items():
        report["arms"][label] = _arm_entry(label, members, step0_drift)
    baseline = baseline if baseline in arms else next(iter(arms))
    report["baseline"] = baseline
    report["paired_tests"] = _paired_over_seeds(arms, baseline)
    report["reward_accuracy_vs_baseline"] = {
        label: found
        for label, members in arms.items()
        if (other := _baseline_for(label, baseline, arms)) != label
        and (found := estimates.paired_accuracies(_rewards_by_seed(members), _rewards_by_seed(arms[other])))
    }
    if stages is None:
        stages = {label: {r.path.name: r.path for r in members} for label, members in arms.items()}
    report["stages"] = stage_rows if stage_rows is not None else report_stages.collect(stages, eval_dirs)
    report["benchmark_contrasts"] = report_stages.benchmark_contrasts(
        report["stages"], baseline.split(" beta=")[0], starts
    )
    colours = figures.arm_colours([r.arm for r in runs] + list(stages))
    report["colours"] = colours
    report["plots"] = figures.report_plots(arms, out, colours, report["arms"])
    probe = figures.probe_plot(report["stages"], out, colours)
    if probe:
        report["plots"].append(probe)
    if write:
        write_json(out / "report.json", report)
        write_text_atomic(out / "report.md", markdown.render(report))
    return report


def _baseline_for(label: str, baseline: str, arms: dict) -> str:
    """The baseline arm's runs at this label's beta (``gelu beta=0.5`` for ``crrelu beta=0.5``) where
    the labels carry a beta, else ``baseline``."""
    _, sep, beta = label.partition(" beta=")
    same_beta = f"{baseline.split(' beta=')[0]} beta={beta}"
    return same_beta if sep and same_beta in arms else baseline


def _rewards_by_seed(members: list[Run]) -> dict:
    return {r.seed: r.rewards for r in members if r.rewards and "accuracy" in r.rewards}


def _paired_over_seeds(arms: dict[str, list[Run]], baseline: str) -> list[dict]:
    """Each arm against the baseline over the seeds both have (:func:`estimates.over_seeds`): our
    reward accuracy where both arms have it, else TRL's, named as such."""

    def values(members):
        return (
            {r.seed: r.rewards["accuracy"] for r in members if r.rewards and "accuracy" in r.rewards},
            {
                r.seed: float(r.final["eval_rewards/accuracies"])
                for r in members
                if "eval_rewards/accuracies" in r.final
            },
        )

    return [
        t
        for label, members in arms.items()
        if label != baseline and (t := estimates.over_seeds(label, values(members), baseline, values(arms[baseline])))
    ]


def _comparison_key(name: str) -> str:
    """A win-rate result's name without the seed of the baseline it was judged against, so that
    every seed's result against 'the gelu arm' (its own seed's gelu run) is one comparison."""
    return re.sub(r"-seed\d+$", "", name)


def _arm_entry(label: str, members: list[Run], step0_drift: dict | None) -> dict:
    """What the report says of one arm: every seed's result, and the pooled one; every number
    names the run (stage) and file it came from."""
    entry = {
        "runs": [str(r.path) for r in members],
        "seeds": [r.seed for r in members],
        "sources": [r.sources for r in members],
        "objective": objective(members[0]),
    }
    accs = [(r, r.final["eval_rewards/accuracies"]) for r in members if "eval_rewards/accuracies" in r.final]
    if accs:  # TRL's own: a mean of batch means in which a tie counts as wrong; kept for reference
        values = [float(a) for _, a in accs]
        entry["trl_eval_reward_accuracy"] = {
            "values": values,
            "mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "stage": [r.name for r, _ in accs],
            "from": [r.sources.get("final") for r, _ in accs],
        }
    ours = [r for r in members if r.rewards and "accuracy" in r.rewards]
    if ours:
        pooled = estimates.accuracies(
            [{"seed": r.seed, "stage": r.name, "from": r.sources["rewards"], "rewards": r.rewards} for r in ours]
        )
        values = [r.rewards["accuracy"] for r in ours]
        entry["reward_accuracy"] = {
            "values": values,
            "mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": [r.rewards["n"] for r in ours],
            **pooled,
        }
        entry["rewards"] = [
            {
                k: r.rewards.get(k)
                for k in (
                    "n",
                    "accuracy",
                    "accuracy_interval",
                    "ties",
                    "training_beta",
                    "margins_per_evaluation_beta",
                    "preference_accuracy",
                    "objective",
                    "implicit_reward",
                )
            }
            | {"seed": r.seed, "stage": r.name, "from": r.sources["rewards"]}
            for r in ours
        ]
    comparisons: dict[str, list] = {}
    for r in members:
        for name, w in r.winrates.items():
            comparisons.setdefault(_comparison_key(name), []).append(
                {
                    "seed": r.seed,
                    "stage": r.name,
                    "from": r.sources[name],
                    "judge": w.get("judge"),
                    "baseline": w.get("baseline"),
                    "generator": w.get("baseline_generator"),  # reference outputs: who generated them
                    "stats": w["stats"],
                }
            )
    if comparisons:
        entry["win_rates"] = {}
        for key, results in comparisons.items():
            group = estimates.win_rates(results)
            for seed_entry, result in zip(group["per_seed"], results):  # the lengths and consistency, per seed
                seed_entry.update(
                    {k: result["stats"].get(k) for k in ("position_consistency", "length_model", "length_baseline")}
                )
            baselines = list(dict.fromkeys(short(r["baseline"]) for r in results))
            shown = baselines[0] if len(baselines) == 1 else f"{_comparison_key(baselines[0])} (each seed's own)"
            generator = results[0].get("generator")
            if generator and generator != results[0]["baseline"]:  # reference outputs, named by their generator
                shown = f"{shown} (outputs of {generator})"
            entry["win_rates"][key] = {"judge": results[0]["judge"], "baseline": shown, **group}
    if step0_drift is not None:  # the swap's own damage: the arm's step-0 model, never a later stage's
        found = step0_drift.get(label)
        if found:
            entry["drift"] = [{**read(Path(found["from"])), "stage": "step 0", "from": found["from"]}]
        elif _patched(members[0]):
            entry["drift_note"] = (
                "step 0 (the patched original) was not evaluated: add `drift:` to the "
                "recipe's evaluations to measure the swap's own damage"
            )
        else:
            entry["drift_note"] = "step 0 is the unpatched original: no swap to measure"
    elif any(r.drift for r in members):
        entry["drift"] = [{**r.drift, "stage": r.name, "from": r.sources["drift"]} for r in members if r.drift]
    counted = [r for r in members if r.data and r.data.get("splits")]
    if counted:
        entry["data"] = [
            {
                "source": r.data.get("source"),
                "splits": r.data["splits"],
                "seed": r.seed,
                "stage": r.name,
                "from": r.sources["data"],
            }
            for r in counted
        ]
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
    final = {k[len("final_") :]: v for k, v in run.final.items() if k.startswith("final_epsilon/")}
    start = figures.starting_epsilons(run)
    if not final and not start:
        return None
    return {
        "seed": run.seed,
        "stage": run.name,
        "from": run.sources.get("final"),
        "final": final,
        "start": start,
        "calibrated_from": _calibrated_at(run),
    }


def _calibrated_at(run: Run) -> dict | None:
    """The calibrated eps per block, and the patch record they were read from: the run's own, or
    (a run that started from an already patched model) its start's."""
    from crrelu_llm.patching.discovery import layer_index

    records = [run.path / run_files.PATCH_REPORT]
    start = (run.recipe or {}).get("model_name_or_path")
    if (run.patch_report or {}).get("already_patched") and start:
        records.append(Path(str(start)) / run_files.PATCH_REPORT)
    for record in records:
        values = read(record).get("calibrated_epsilons") if record.exists() else None
        if values:
            return {
                "from": str(record),
                "values": {f"{layer_index(p):02d}": v for p, v in values.items() if layer_index(p) is not None},
            }
    return None
