"""What an experiment prints and keeps in ``summary.json``: one row per DPO run (win rates,
reward accuracy, KL at step 0, eps range) and the help-or-harm rows (each arm at every stage:
KL to the original, benchmarks, eps learned and least-squares), with their sample sizes and
the differences those sizes can detect."""

from __future__ import annotations

from pathlib import Path

from . import evaluate
from .files import read_json
from .stats import detectable_difference


def summarise(exp, dpo_runs: list[Path], sft_dirs: dict) -> dict:
    rows = []
    for out in dpo_runs:
        arm = out.parent.name
        row = {"arm": arm, "run": str(out)}
        final = read_json(out / "final_metrics.json")
        row["eval_reward_accuracy"] = final.get("eval_rewards/accuracies")
        rewards = evaluate.rewards_file(out)
        if rewards.exists():
            r = read_json(rewards)
            if "accuracy" in r:
                row["reward_accuracy"] = {"accuracy": r["accuracy"], "interval": r["accuracy_interval"], "n": r["n"]}
        eps = [v for k, v in final.items() if k.startswith("final_epsilon/") and k[14:].isdigit()]
        row["epsilon_range"] = [min(eps), max(eps)] if eps else None
        judge = exp.evaluations.get("winrate", {}).get("judge")
        baselines = {"vs-sft": sft_dirs[arm], f"vs-{exp.baseline_arm}": exp.output_dir / exp.baseline_arm / out.name}
        for name, baseline in baselines.items():
            file = evaluate.winrate_file(out, judge, baseline) if judge else None
            if file and file.exists() and baseline != out:
                stats = read_json(file)["stats"]
                row[f"winrate_{name}"] = {"win_rate": stats["win_rate"], "interval": stats["interval"],
                                         "wins": stats["wins"], "ties": stats["ties"], "losses": stats["losses"],
                                         "n": stats["n"]}
        drift = evaluate.drift_file(exp.output_dir / arm / "patched")
        if drift.exists():
            row["kl_step0"] = read_json(drift)["kl_patched_original"]
        rows.append(row)
    return {"rows": rows, "report": str(exp.output_dir / "report" / "report.md")}


def format_table(summary: dict, baseline: str) -> str:
    """The console summary: one row per DPO run, 95% intervals, and the sample sizes under it."""
    def interval(value, lo, hi):
        return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"

    def wr(entry):
        return interval(entry["win_rate"], *entry["interval"]) if entry else "–"

    def acc(row):
        if row.get("reward_accuracy"):
            return interval(row["reward_accuracy"]["accuracy"], *row["reward_accuracy"]["interval"])
        return f"{row['eval_reward_accuracy']:.2f}" if row.get("eval_reward_accuracy") is not None else "–"

    columns = [("run", 26, "<"), ("DPO vs own SFT", 18, ">"), (f"vs {baseline} DPO", 18, ">"),
               ("reward accuracy", 18, ">"), ("KL step 0", 9, ">"), ("eps range", 16, ">")]
    lines = ["  ".join(f"{name:{align}{width}}" for name, width, align in columns)]
    sizes, detectable = set(), set()
    for r in summary["rows"]:
        eps = f"[{r['epsilon_range'][0]:.2f}, {r['epsilon_range'][1]:.2f}]" if r.get("epsilon_range") else "–"
        kl = f"{r['kl_step0']:.3f}" if "kl_step0" in r else "–"
        cells = [f"{r['arm']}/{Path(r['run']).name}", wr(r.get("winrate_vs-sft")), wr(r.get(f"winrate_vs-{baseline}")),
                 acc(r), kl, eps]
        lines.append("  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, columns)))
        for w in (w for k, w in r.items() if k.startswith("winrate_") and w):
            sizes.add(f"win rates over {w['n']} prompts")
            detectable.add(f"{100 * detectable_difference(w['n'], two_samples=False):.1f} points from 0.5 for a win rate")
        if r.get("reward_accuracy"):
            sizes.add(f"reward accuracy over {r['reward_accuracy']['n']} pairs")
            detectable.add(f"{100 * detectable_difference(r['reward_accuracy']['n']):.1f} points between two reward "
                           "accuracies")
    if sizes:
        lines.append("95% intervals (Wilson for win rates, ties as 1/2; bootstrap for accuracy); n: "
                     + ", ".join(sorted(sizes)) + "; detectable with 80% power: " + ", ".join(sorted(detectable)))
    return "\n".join(lines)


def help_or_harm(stages: dict, eval_dirs: dict) -> list[dict]:
    """Per arm and stage: KL to the original, benchmark results, mean learned and least-squares eps."""
    from .report_stages import collect

    rows = []
    for r in collect(stages, eval_dirs):
        layers = r.get("probe", {}).get("layers", [])
        learned = [layer["epsilon"] for layer in layers if layer["epsilon"] is not None]
        fitted = [layer["least_squares_epsilon"] for layer in layers if layer["least_squares_epsilon"] is not None]
        rows.append({"arm": r["arm"], "stage": r["stage"], "kl_to_original": r.get("kl_to_original", {}).get("value"),
                     "benchmarks": {t: {k: b[k] for k in ("metric", "value", "stderr", "n")}
                                    for t, b in r["benchmarks"].items()},
                     "epsilon_learned_mean": sum(learned) / len(learned) if learned else None,
                     "epsilon_least_squares_mean": sum(fitted) / len(fitted) if fitted else None})
    return rows


def format_stages(summary: dict) -> str:
    """The console's help-or-harm table: each arm at every stage (empty without such evaluations)."""
    rows = summary.get("help_or_harm") or []
    if not rows:
        return ""
    tasks = sorted({t for r in rows for t in r["benchmarks"]})
    head = f"{'arm':<8}{'stage':<22}{'KL to original':>15}" + "".join(f"{t:>20}" for t in tasks) + \
        f"{'eps learned':>13}{'eps LS':>9}"
    lines = [head]
    for r in rows:
        kl = f"{r['kl_to_original']:.4f}" if r["kl_to_original"] is not None else "–"
        cells = []
        for t in tasks:
            b = r["benchmarks"].get(t)
            cells.append(f"{b['value']:.3f} ± {b['stderr']:.3f}" if b and b["stderr"] is not None else "–")
        eps = lambda v: f"{v:.3f}" if v is not None else "–"  # noqa: E731
        lines.append(f"{r['arm']:<8}{r['stage']:<22}{kl:>15}" + "".join(f"{c:>20}" for c in cells)
                     + f"{eps(r['epsilon_learned_mean']):>13}{eps(r['epsilon_least_squares_mean']):>9}")
    sizes = sorted({b["n"] for r in rows for b in r["benchmarks"].values() if b["n"]})
    if sizes:
        lines.append("benchmarks: lm-eval accuracy ± standard error over " + ", ".join(
            f"n={n} items (two models must differ by {100 * detectable_difference(n):.1f} points to be told apart)"
            for n in sizes) + "; eps: means over layers")
    return "\n".join(lines)
