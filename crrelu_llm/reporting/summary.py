"""What an experiment prints and keeps in ``summary.json``: one row per DPO run (win rates,
reward accuracy, KL at step 0, eps range) and the help-or-harm rows (each arm at every stage:
KL to the original, benchmarks, eps learned and least-squares), with their sample sizes and
the differences those sizes can detect.

Every number is found through the experiment's stage declaration (:mod:`crrelu_llm.experiments.stages`)
and carries the stage that computed it and the file it was read from.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from crrelu_llm.files import read_json
from crrelu_llm.stats import detectable_difference


def _winrate_entry(spec) -> dict | None:
    file = spec.done
    if not file.exists():
        return None
    stats = read_json(file)["stats"]
    return {"win_rate": stats["win_rate"], "interval": stats["interval"], "wins": stats["wins"],
            "ties": stats["ties"], "losses": stats["losses"], "n": stats["n"], "sign_test_p": stats["sign_test_p"],
            "length_controlled": stats.get("length_controlled"), "stage": spec.name, "from": str(file)}


def step0_drift(declaration, arm: str) -> dict | None:
    """The KL of the arm's step-0 model to the original, with its stage and file (None for an
    unpatched arm, whose step 0 is the original itself, or when drift was not evaluated)."""
    for spec in declaration.by_kind("drift"):
        if spec.arm == arm and spec.step == "step 0" and spec.done.exists():
            return {"value": read_json(spec.done)["kl_patched_original"], "stage": spec.name, "from": str(spec.done)}
    return None


def summarise(exp, declaration) -> dict:
    rows = []
    for run in declaration.dpo_runs:
        out = Path(run.model)
        row = {"arm": run.arm, "run": str(out), "stage": run.name}
        final = read_json(out / "final_metrics.json")
        for spec in declaration.by_kind("rewards"):
            if spec.model == run.model and spec.done.exists():
                r = read_json(spec.done)
                if "accuracy" in r:
                    row["reward_accuracy"] = {"accuracy": r["accuracy"], "interval": r["accuracy_interval"],
                                              "n": r["n"], "ties": r.get("ties"), "stage": spec.name,
                                              "from": str(spec.done)}
        eps = [v for k, v in final.items() if k.startswith("final_epsilon/") and k[14:].isdigit()]
        row["epsilon_range"] = [min(eps), max(eps)] if eps else None
        start = declaration.start_of(run)
        for spec in declaration.by_kind("winrate"):
            if spec.model == run.model:
                name = "vs-sft" if spec.baseline == start else f"vs-{exp.baseline_arm}"
                entry = _winrate_entry(spec)
                if entry:
                    row[f"winrate_{name}"] = entry
        drift = step0_drift(declaration, run.arm)
        if drift:
            row["kl_step0"] = drift["value"]
            row["kl_step0_from"] = {"stage": drift["stage"], "from": drift["from"]}
        rows.append(row)
    return {"rows": rows, "report": str(declaration.layout.report / "report.md")}


def stage_totals(log: list[dict]) -> dict:
    """How many stages ran now and how many were reused, with their wall times (a reused stage's
    time is the one it took when it ran)."""
    ran = [s for s in log if s["status"] in ("ran", "reran")]
    reused = [s for s in log if s["status"] == "skipped"]
    return {"ran": len(ran), "ran_seconds": round(sum(s.get("seconds", 0) for s in ran), 1),
            "reused": len(reused), "reused_seconds": round(sum(s.get("seconds", 0) for s in reused), 1),
            "reused_without_timing": sum(1 for s in reused if "seconds" not in s)}


def format_totals(summary: dict) -> str:
    t = summary["stage_totals"]
    reused = f"reused {t['reused']} finished stage(s)"
    if t["reused"]:
        reused += f" (they took {t['reused_seconds']:.0f} s when they ran" + (
            f"; {t['reused_without_timing']} without a recorded time)" if t["reused_without_timing"] else ")")
    return f"ran {t['ran']} stage(s) now ({t['ran_seconds']:.0f} s), {reused}"


def format_table(summary: dict, baseline: str) -> str:
    """The console summary: one row per DPO run, 95% intervals, and the sample sizes under it."""
    def interval(value, lo, hi):
        return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"

    def wr(entry):
        return interval(entry["win_rate"], *entry["interval"]) if entry else "–"

    def acc(row):
        r = row.get("reward_accuracy")
        return interval(r["accuracy"], *r["interval"]) if r else "–"

    names = [f"{r['arm']}/{Path(r['run']).name}" for r in summary["rows"]]
    columns = [("run", max([26, *map(len, names)]), "<"), ("DPO vs own SFT", 18, ">"), (f"vs {baseline} DPO", 18, ">"),
               ("reward accuracy", 18, ">"), ("KL step 0", 9, ">"), ("eps range", 16, ">")]
    lines = ["  ".join(f"{name:{align}{width}}" for name, width, align in columns)]
    sizes, detectable = set(), set()
    for name, r in zip(names, summary["rows"]):
        eps = f"[{r['epsilon_range'][0]:.2f}, {r['epsilon_range'][1]:.2f}]" if r.get("epsilon_range") else "–"
        kl = f"{r['kl_step0']:.3f}" if "kl_step0" in r else "–"
        cells = [name, wr(r.get("winrate_vs-sft")), wr(r.get(f"winrate_vs-{baseline}")), acc(r), kl, eps]
        lines.append("  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, columns)))
        for w in (w for k, w in r.items() if k.startswith("winrate_") and w):
            sizes.add(f"win rates over {w['n']} prompts")
            detectable.add(
                f"{100 * detectable_difference(w['n'], two_samples=False):.1f} points from 0.5 for a win rate"
            )
        if r.get("reward_accuracy"):
            sizes.add(f"reward accuracy over {r['reward_accuracy']['n']} pairs")
            detectable.add(
                f"{100 * detectable_difference(r['reward_accuracy']['n']):.1f} points between two reward accuracies"
            )
    if sizes:
        lines.append(
            "95% intervals (Wilson for win rates, ties as 1/2; bootstrap for accuracy); n: "
            + ", ".join(sorted(sizes))
            + "; detectable with 80% power: "
            + ", ".join(sorted(detectable))
        )
    return "\n".join(lines)


def _verdict(entry: dict) -> str:
    lo, hi = entry["interval"]
    if lo > 0.5:
        return "wins more than it loses"
    if hi < 0.5:
        return "loses more than it wins"
    need = 100 * detectable_difference(entry["n"], two_samples=False)
    return f"no difference detectable at n = {entry['n']} (a win rate {need:.1f} points from 0.5 would be)"


def readings(summary: dict, baseline: str) -> list[str]:
    """Sentences generated from the intervals and tests of the summary, one per arm and
    comparison (over its seeds when there are several): what these runs can and cannot say."""
    lines = []
    for key, what in (("vs-sft", "DPO model vs its own SFT start"), (f"vs-{baseline}", f"vs the {baseline} arm")):
        groups: dict[tuple, list] = {}
        for row in summary["rows"]:
            entry = row.get(f"winrate_{key}")
            if entry:
                groups.setdefault((row["arm"], Path(row["run"]).name.split("-seed")[0]), []).append(entry)
        for (arm, run), entries in groups.items():
            if len(entries) == 1:
                e = entries[0]
                lines.append(
                    f"{arm} {what}: {e['win_rate']:.2f} [{e['interval'][0]:.2f}, {e['interval'][1]:.2f}], "
                    f"{e['wins']} wins, {e['losses']} losses, {e['ties']} ties (sign test p = "
                    f"{e['sign_test_p']:.2g}): {_verdict(e)}; one seed"
                )
                continue
            verdicts = [_verdict(e) for e in entries]
            rates = [e["win_rate"] for e in entries]
            counted = ", ".join(f"{verdicts.count(v)} of {len(entries)} seeds: {v}" for v in dict.fromkeys(verdicts))
            lines.append(
                f"{arm} {what} ({run}): win rates {min(rates):.2f}-{max(rates):.2f} over {len(entries)} "
                f"seeds; {counted}"
            )
    accuracies: dict[str, list] = {}
    for row in summary["rows"]:
        if row.get("reward_accuracy"):
            accuracies.setdefault(row["arm"], []).append(row["reward_accuracy"])
    if baseline in accuracies:
        base = statistics.fmean(a["accuracy"] for a in accuracies[baseline])
        for arm, entries in accuracies.items():
            if arm == baseline:
                continue
            n = min(a["n"] for a in entries)
            diff = 100 * (statistics.fmean(a["accuracy"] for a in entries) - base)
            need = 100 * detectable_difference(n)
            lines.append(
                f"{arm} vs {baseline}, reward accuracy: {diff:+.1f} points"
                + (f" (mean over {len(entries)} seeds)" if len(entries) > 1 else "")
                + (
                    f"; n = {n} pairs detects {need:.1f} points: no difference detectable"
                    if abs(diff) < need
                    else f"; larger than the {need:.1f} points n = {n} pairs detects"
                )
            )
    return lines


def help_or_harm(declaration) -> list[dict]:
    """Per arm and stage: KL to the original, benchmark results, mean learned and least-squares eps."""
    from crrelu_llm.reporting.report_stages import collect

    rows = []
    for r in collect(declaration.models(), declaration.eval_dirs()):
        layers = r.get("probe", {}).get("layers", [])
        learned = [layer["epsilon"] for layer in layers if layer["epsilon"] is not None]
        fitted = [layer["least_squares_epsilon"] for layer in layers if layer["least_squares_epsilon"] is not None]
        rows.append(
            {
                "arm": r["arm"],
                "stage": r["stage"],
                "model": r["model"],
                "kl_to_original": r.get("kl_to_original", {}).get("value"),
                "benchmarks": {
                    t: {k: b[k] for k in ("metric", "value", "stderr", "n")} for t, b in r["benchmarks"].items()
                },
                "epsilon_learned_mean": sum(learned) / len(learned) if learned else None,
                "epsilon_least_squares_mean": sum(fitted) / len(fitted) if fitted else None,
            }
        )
    return rows


def format_stages(summary: dict) -> str:
    """The console's help-or-harm table: each arm at every stage (empty without such evaluations)."""
    rows = summary.get("help_or_harm") or []
    if not rows:
        return ""
    tasks = sorted({t for r in rows for t in r["benchmarks"]})
    head = (
        f"{'arm':<8}{'stage':<22}{'KL to original':>15}"
        + "".join(f"{t:>20}" for t in tasks)
        + f"{'eps learned':>13}{'eps LS':>9}"
    )
    lines = [head]
    for r in rows:
        kl = f"{r['kl_to_original']:.4f}" if r["kl_to_original"] is not None else "–"
        cells = []
        for t in tasks:
            b = r["benchmarks"].get(t)
            cells.append(f"{b['value']:.3f} ± {b['stderr']:.3f}" if b and b["stderr"] is not None else "–")
        eps = lambda v: f"{v:.3f}" if v is not None else "–"  # noqa: E731
        lines.append(
            f"{r['arm']:<8}{r['stage']:<22}{kl:>15}"
            + "".join(f"{c:>20}" for c in cells)
            + f"{eps(r['epsilon_learned_mean']):>13}{eps(r['epsilon_least_squares_mean']):>9}"
        )
    sizes = sorted({b["n"] for r in rows for b in r["benchmarks"].values() if b["n"]})
    if sizes:
        lines.append(
            "benchmarks: lm-eval accuracy ± standard error over "
            + ", ".join(
                f"n={n} items (two models must differ by {100 * detectable_difference(n):.1f} points to be told apart)"
                for n in sizes
            )
            + "; eps: means over layers"
        )
    return "\n".join(lines)
