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

from crrelu_llm.errors import ReportError
from crrelu_llm.evaluation.evaluate import eval_dir
from crrelu_llm.evaluation.length_control import describe
from crrelu_llm.files import read_json, writable_dir, write_json, write_text_atomic
from crrelu_llm.reporting import figures, report_stages
from crrelu_llm.stats import detectable_difference, paired_permutation_test
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
    recipe = yaml.safe_load((path / "recipe.yaml").read_text()) if (path / "recipe.yaml").exists() else None
    run = Run(label or _recorded_label(recipe, path), path, recipe)
    state = _trainer_state(path)
    if state:
        run.log_history = report_stages.read_result(state).get("log_history", [])
        run.sources["log_history"] = str(state)
    if (path / "final_metrics.json").exists():
        run.final = report_stages.read_result(path / "final_metrics.json")
        run.sources["final"] = str(path / "final_metrics.json")
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
    if (path / "patch_report.json").exists():
        run.patch_report = report_stages.read_result(path / "patch_report.json")
    if (path / "data_summary.json").exists():
        run.data = report_stages.read_result(path / "data_summary.json")
        run.sources["data"] = str(path / "data_summary.json")
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
                    if x:
                        ax.plot(x, y, color=colours[run.arm], linestyle=figures.line_style("DPO"),
                                alpha=0.9 if i == 0 else 0.5, label=label if i == 0 else None)
            ax.set_title(key)
            ax.set_xlabel("training step")
            ax.set_ylabel(key)
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=110)
        plt.close(fig)
        files.append("training_curves.png")
    eps_arms = {label: runs[0] for label, runs in arms.items()
                if any(k.startswith("epsilon/") and k[8:].isdigit() for e in runs[0].log_history for k in e)}
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
        spread = 0.5 / max(len(by_arm), 1)
        for i, (arm, points) in enumerate(by_arm.items()):
            points = sorted(points)
            # one slot per training beta, the arms side by side inside it
            x = [betas.index(p[0]) + spread * (i - (len(by_arm) - 1) / 2) for p in points]
            y = [p[1] for p in points]
            err = [[p[1] - p[2][0] for p in points], [p[2][1] - p[1] for p in points]]
            ax.errorbar(x, y, yerr=err, marker="o", linestyle="-" if len(points) > 1 else "none", capsize=3,
                        color=colours[arm], label=arm)
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlim(-0.6, len(betas) - 0.4)
        ax.set_xlabel("training beta (one DPO run per point)")
        ax.set_ylabel("reward accuracy, 95% bootstrap CI")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "reward_accuracy.png", dpi=110)
        plt.close(fig)
        files.append("reward_accuracy.png")
    bars = [(f"{label} ({objective(run).upper()}) vs {_short(w.get('baseline'))}", run.arm, w["stats"])
            for label, runs in arms.items()
            for run in runs[:1] for w in run.winrates.values()]
    if bars:
        fig = figures.win_rate_figure(bars, colours)
        fig.savefig(out / "win_rates.png", dpi=110)
        plt.close(fig)
        files.append("win_rates.png")
    return files


def objective(run) -> str:
    """The preference objective a run trained with (its ``reference.json``; dpo when it does not say)."""
    recorded = Path(run.path) / "reference.json"
    return (read_json(recorded).get("objective") if recorded.exists() else None) or "dpo"


def _short(path) -> str:
    """The last two components of a run path, the way the report names baselines."""
    return "/".join(Path(str(path)).parts[-2:]) if path else "?"


def _accuracy_by_training_beta(arms: dict[str, list[Run]]) -> dict[str, list]:
    """arm -> [(training beta, reward accuracy, interval)] over the first run of each label
    whose rewards were evaluated and whose training beta is known."""
    points: dict[str, list] = {}
    for runs in arms.values():
        run = runs[0]
        if not run.rewards or "accuracy" not in run.rewards:
            continue
        beta = run.rewards.get("training_beta") or (run.recipe or {}).get("beta")
        if beta is None:
            continue
        points.setdefault(run.arm, []).append((beta, run.rewards["accuracy"], run.rewards["accuracy_interval"]))
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
            stages: dict[str, dict[str, Path]] | None = None, eval_dirs: dict[str, Path] | None = None) -> dict:
    """Write report.md, report.json and plots for the runs; return the report dict.
    ``step0_drift`` maps an arm label to its step-0 drift (``{"stage", "from"}``; None for an
    unpatched arm, whose step 0 is the original): the experiment runner measures the swap's own
    damage there. Without it each run's own drift is shown, named as that run's. ``stages``
    maps an arm to ``{stage: model directory}`` (step 0, SFT, DPO...) for the help-or-harm table
    of drift, benchmarks and probes; by default, each run given is a stage of its arm."""
    if not specs:
        raise ReportError("give at least one run directory")
    runs = [load_run(s) for s in specs]
    arms: dict[str, list[Run]] = {}
    for run in runs:
        arms.setdefault(run.label, []).append(run)
    for label, members in arms.items():
        _check_poolable(label, members)
    writable_dir(Path(out))
    report = {"arms": {}, "plots": []}
    for label, members in arms.items():
        report["arms"][label] = _arm_entry(label, members, step0_drift)
    labels = list(arms)
    if len(labels) >= 2:  # ours where every run has it, else TRL's (named as such)
        for key, metric in (("reward_accuracy", "reward accuracy (eval rewards)"),
                            ("trl_eval_reward_accuracy", "TRL's eval_rewards/accuracies (batch mean, ties as wrong)")):
            a, b = (report["arms"][label].get(key, {}).get("values", []) for label in labels[:2])
            if len(a) == len(b) == len(arms[labels[0]]) == len(arms[labels[1]]) >= 2:
                report["paired_test"] = {"arms": labels[:2], "metric": metric, "pairs": len(a),
                                         "p_value": paired_permutation_test(a, b),
                                         "test": "exact sign-flip permutation over seeds"}
                break
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
    write_text_atomic(out / "report.md", _markdown(report))
    return report


def _run_name(run: Run) -> str:
    return "/".join(run.path.parts[-2:])


def _arm_entry(label: str, members: list[Run], step0_drift: dict | None) -> dict:
    """What the report says of one arm; every number names the run (stage) and file it came from."""
    entry = {"runs": [str(r.path) for r in members], "sources": [r.sources for r in members],
             "objective": objective(members[0])}
    accs = [(r, r.final["eval_rewards/accuracies"]) for r in members if "eval_rewards/accuracies" in r.final]
    if accs:  # TRL's own: a mean of batch means in which a tie counts as wrong; kept for reference
        values = [float(a) for _, a in accs]
        entry["trl_eval_reward_accuracy"] = {
            "values": values, "mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "stage": [_run_name(r) for r, _ in accs], "from": [r.sources.get("final") for r, _ in accs]}
    ours = [r for r in members if r.rewards and "accuracy" in r.rewards]
    if ours:
        values = [r.rewards["accuracy"] for r in ours]
        entry["reward_accuracy"] = {
            "values": values, "mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1
            else 0.0, "n": [r.rewards["n"] for r in ours], "interval": ours[0].rewards["accuracy_interval"],
            "stage": [_run_name(r) for r in ours], "from": [r.sources["rewards"] for r in ours]}
    first = members[0]
    if first.rewards and "accuracy" in first.rewards:
        entry["rewards"] = {k: first.rewards.get(k) for k in (
            "n", "accuracy", "accuracy_interval", "ties", "training_beta", "margins_per_evaluation_beta",
            "preference_accuracy", "objective", "implicit_reward")} | {"stage": _run_name(first),
                                                                       "from": first.sources["rewards"]}
    if first.winrates:
        entry["win_rates"] = {name: {**w["stats"], "judge": w.get("judge"), "baseline": w.get("baseline"),
                                     "stage": _run_name(first), "from": first.sources[name]}
                              for name, w in first.winrates.items()}
    if step0_drift is not None:  # the swap's own damage: the arm's step-0 model, never a later stage's
        found = step0_drift.get(label)
        if found:
            entry["drift"] = {**report_stages.read_result(Path(found["from"])), "stage": "step 0",
                              "from": found["from"]}
        else:
            entry["drift_note"] = "step 0 is the unpatched original: no swap to measure"
    elif first.drift:
        entry["drift"] = {**first.drift, "stage": _run_name(first), "from": first.sources["drift"]}
    if first.data and first.data.get("splits"):
        entry["data"] = {"source": first.data.get("source"), "splits": first.data["splits"],
                         "stage": _run_name(first), "from": first.sources["data"]}
    eps = {k: v for k, v in first.final.items() if k.startswith("final_epsilon/")}
    if eps:
        entry["final_epsilon"] = {**eps, "stage": _run_name(first), "from": first.sources.get("final")}
    return entry


def compare_experiment(declaration, baseline_arm: str) -> dict:
    """The report of an experiment: every DPO run under its arm (``arm beta=B`` when the
    experiment trains several betas), the KL column from each arm's step-0 model, and the
    help-or-harm table from every model the declaration names."""
    from crrelu_llm.reporting.summary import step0_drift

    several_betas = len({run.beta for run in declaration.dpo_runs}) > 1

    def label(arm, beta):
        return f"{arm} beta={beta:g}" if several_betas else arm

    specs = [f"{label(run.arm, run.beta)}={run.model}" for run in declaration.dpo_runs]
    drift = {label(run.arm, run.beta): step0_drift(declaration, run.arm) for run in declaration.dpo_runs}
    return compare(specs, declaration.layout.report, step0_drift=drift, stages=declaration.models(),
                   eval_dirs=declaration.eval_dirs())


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _markdown(report: dict) -> str:
    lines = ["# crrelu-llm comparison", ""]
    rows = []
    for label, arm in report["arms"].items():
        acc = arm.get("reward_accuracy")
        if acc and len(acc["values"]) > 1:
            shown = f"{acc['mean']:.3f} ± {acc['stdev']:.3f} (sd over {len(acc['values'])} runs)"
        elif acc:
            lo, hi = acc["interval"]
            shown = f"{acc['mean']:.3f} [{lo:.3f}, {hi:.3f}], n={acc['n'][0]}"
        else:
            shown = "– (not evaluated: evaluations.rewards)"
        if "drift" in arm:
            kl = f"{arm['drift']['kl_patched_original']:.4f} ({arm['drift']['stage']})"
        else:
            kl = "– (" + arm.get("drift_note", "not evaluated") + ")"
        rows.append(f"| {label} | {len(arm['runs'])} | {shown} | "
                    + (_fmt(arm["rewards"]["preference_accuracy"]) if "rewards" in arm else "–") + f" | {kl} |")
    lines += ["| arm | runs | reward accuracy (95% bootstrap CI) | preference accuracy (reference-free) | "
              "KL to original (model it was measured on) |", "|---|---|---|---|---|", *rows, "",
              "Reward accuracy is `crrelu-llm eval rewards`' per-example accuracy (a tie is not correct; ties are "
              "given in each arm's section); TRL's `eval_rewards/accuracies`, a mean of batch means, is in "
              "report.json only.", ""]
    counted = [(label, arm["data"]) for label, arm in report["arms"].items() if "data" in arm]
    if counted:
        from crrelu_llm.data.accounting import line

        lines += ["Data that reached each arm's (first) run, per split (`data_summary.json`):", ""]
        lines += [f"- {label} ({d['stage']}): " + "; ".join(line(split, c) for split, c in d["splits"].items())
                  for label, d in counted]
        lines.append("")
    for label, arm in report["arms"].items():
        if "rewards" in arm:
            r = arm["rewards"]
            lo, hi = r["accuracy_interval"]
            trained = f"trained with beta {r['training_beta']:g}" if r.get("training_beta") is not None else \
                "training beta unknown"
            lines += [f"## Reward accuracy: {label}, {r['stage']}", f"(from `{r['from']}`)", ""]
            if r.get("objective"):  # reference-free: not DPO's reward, nor on its scale
                lines.append(f"- {r['objective'].upper()} run, no reference model: its reward is "
                             f"{r['implicit_reward']}")
            lines += [
                      f"- reward accuracy {r['accuracy']:.3f}, 95% bootstrap [{lo:.3f}, {hi:.3f}], n = {r['n']} pairs, "
                      f"ties {r['ties']:.3f} ({trained}; for one model this does not depend on the evaluation beta)",
                      f"- with n = {r['n']}, two arms' accuracies must differ by "
                      f"{100 * detectable_difference(r['n']):.1f} "
                      "points to be told apart (95% confidence, 80% power)",
                      "", "| evaluation beta | mean margin | 95% CI |", "|---|---|---|"]
            for b in r["margins_per_evaluation_beta"]:
                mlo, mhi = b["margin_interval"]
                lines.append(f"| {b['beta']:g} | {b['margin']:.4f} | [{mlo:.4f}, {mhi:.4f}] |")
            lines.append("")
        for w in arm.get("win_rates", {}).values():
            lo, hi = w["interval"]
            lines += [f"## {label} ({arm['objective'].upper()}, {w['stage']}) vs {_short(w.get('baseline'))} "
                      f"(judge {w.get('judge')})",
                      f"(from `{w['from']}`)", "",
                      f"- wins / ties / losses: {w['wins']} / {w['ties']} / {w['losses']} of {w['n']}",
                      f"- win rate (ties as 1/2): {w['win_rate']:.3f}, 95% Wilson [{lo:.3f}, {hi:.3f}]",
                      f"- {describe(w.get('length_controlled'))} (the judge's preference at equal length, "
                      "95% bootstrap over prompts; see docs/evaluation.md)",
                      f"- exact sign test on decisive pairs: p = {w['sign_test_p']:.4g}",
                      f"- with n = {w['n']}, a win rate must be "
                      f"{100 * detectable_difference(w['n'], two_samples=False):.1f} "
                      "points from 0.5 to be detected (95% confidence, 80% power)",
                      "- position consistency: " + (_fmt(w["position_consistency"]) if w.get("position_consistency")
                                                    is not None else "n/a (this judge does not see an order)"),
                      f"- mean response length (chars): model {w['length_model']['mean']:.1f}, "
                      f"baseline {w['length_baseline']['mean']:.1f}", ""]
        if "drift" in arm:
            d = arm["drift"]
            lines += [f"## Drift: {label}, {d['stage']}", f"(from `{d['from']}`)", "",
                      f"- perplexity: this model {d['perplexity_patched']:.3f}, "
                      f"original {d['perplexity_original']:.3f}",
                      f"- mean per-token KL(this model || original): {d['kl_patched_original']:.4f} over "
                      f"{d['tokens']} tokens", ""]
    lines += report_stages.markdown(report.get("stages", []))
    if "paired_test" in report:
        t = report["paired_test"]
        lines += ["## Paired test over seeds", "",
                  f"{t['arms'][0]} vs {t['arms'][1]}, {t['metric']}, {t['pairs']} pairs: "
                  f"p = {t['p_value']:.4g} ({t['test']})", ""]
    for plot in report["plots"]:
        lines.append(f"![{plot}]({plot})")
    return "\n".join(lines) + "\n"
