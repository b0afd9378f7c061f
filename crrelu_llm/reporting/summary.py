"""What an experiment prints and keeps in ``summary.json``: one row per DPO run (win rates,
reward accuracy, KL at step 0, eps range) and the help-or-harm rows (each arm at every stage:
KL to the original, benchmarks, eps learned and least-squares), with their sample sizes and
the differences those sizes can detect.

Every number is found through the experiment's stage declaration (:mod:`crrelu_llm.experiments.stages`)
and carries the stage that computed it and the file it was read from.
"""

from __future__ import annotations

from pathlib import Path

from crrelu_llm import run_files
from crrelu_llm.files import read_json
from crrelu_llm.reporting import estimates
from crrelu_llm.stats import detectable_difference, verdict, win_rate_estimate


def _winrate_entry(spec) -> dict | None:
    file = spec.done
    if not file.exists():
        return None
    stats = read_json(file)["stats"]
    estimate = win_rate_estimate(stats["wins"], stats["ties"], stats["losses"])
    return {
        "win_rate": estimate.value,
        "interval": estimate.interval,
        "wins": stats["wins"],
        "ties": stats["ties"],
        "losses": stats["losses"],
        "n": stats["n"],
        "sign_test_p": estimate.p_value,
        "estimate": estimate.to_dict(),
        "length_controlled": stats.get("length_controlled"),
        "stage": spec.name,
        "from": str(file),
    }


def step0_drift(declaration, arm: str) -> dict | None:
    """The KL of the arm's step-0 model to the original, with its stage and file (None for an
    unpatched arm, whose step 0 is the original itself, or when drift was not evaluated)."""
    for spec in declaration.by_kind("drift"):
        if spec.arm == arm and spec.step == "step 0" and spec.done.exists():
            return {"value": read_json(spec.done)["kl_patched_original"], "stage": spec.name, "from": str(spec.done)}
    return None


def summarise(exp, declaration) -> dict:
    rows, rewards, judged = [], {}, {}
    for run in declaration.preference_runs:
        out = Path(run.model)
        row = {"arm": run.arm, "run": str(out), "stage": run.name, "step": run.step, "seed": run.seed, "beta": run.beta}
        final = read_json(out / run_files.FINAL_METRICS)
        for spec in declaration.by_kind("rewards"):
            if spec.model == run.model and spec.done.exists():
                r = read_json(spec.done)
                if "accuracy" in r:
                    row["reward_accuracy"] = {
                        "accuracy": r["accuracy"],
                        "interval": r["accuracy_interval"],
                        "n": r["n"],
                        "ties": r.get("ties"),
                        "stage": spec.name,
                        "from": str(spec.done),
                    }
                    rewards[(run.arm, run.beta, run.seed)] = r
        eps = [v for k, v in final.items() if k.startswith("final_epsilon/") and k[14:].isdigit()]
        row["epsilon_range"] = [min(eps), max(eps)] if eps else None
        start = declaration.start_of(run)
        for spec in declaration.by_kind("winrate"):
            if spec.model == run.model:
                name = "vs-sft" if spec.baseline == start else f"vs-{exp.baseline_arm}"
                entry = _winrate_entry(spec)
                if entry:
                    row[f"winrate_{name}"] = entry
                    judged.setdefault((run.arm, run.beta, name), []).append(
                        {
                            "seed": run.seed,
                            "stage": spec.name,
                            "from": str(spec.done),
                            "stats": read_json(spec.done)["stats"],
                        }
                    )
        drift = step0_drift(declaration, run.arm)
        if drift:
            row["kl_step0"] = drift["value"]
            row["kl_step0_from"] = {"stage": drift["stage"], "from": drift["from"]}
        rows.append(row)
    return {
        "rows": rows,
        "report": str(declaration.layout.report / "report.md"),
        "win_rates": [
            {"arm": arm, "beta": beta, "comparison": name, **estimates.win_rates(results)}
            for (arm, beta, name), results in judged.items()
        ],
        "reward_accuracy": _paired_accuracy(rewards, exp.baseline_arm),
    }


def _paired_accuracy(rewards: dict, baseline: str) -> list[dict]:
    """Each arm against the baseline arm at the same beta: reward accuracy paired on the same pairs."""
    out = []
    for arm, beta in dict.fromkeys((a, b) for a, b, _ in rewards):
        if arm == baseline:
            continue
        ours = {s: r for (a, b, s), r in rewards.items() if (a, b) == (arm, beta)}
        theirs = {s: r for (a, b, s), r in rewards.items() if (a, b) == (baseline, beta)}
        entry = estimates.paired_accuracies(ours, theirs)
        if entry:
            out.append({"arm": arm, "baseline": baseline, "beta": beta, **entry})
    return out


def stage_totals(log: list[dict]) -> dict:
    """How many stages ran now and how many were reused, with their wall times (a reused stage's
    time is the one it took when it ran)."""
    ran = [s for s in log if s["status"] in ("ran", "reran")]
    reused = [s for s in log if s["status"] == "skipped"]
    return {
        "ran": len(ran),
        "ran_seconds": round(sum(s.get("seconds", 0) for s in ran), 1),
        "reused": len(reused),
        "reused_seconds": round(sum(s.get("seconds", 0) for s in reused), 1),
        "reused_without_timing": sum(1 for s in reused if "seconds" not in s),
    }


def format_totals(summary: dict) -> str:
    t = summary["stage_totals"]
    reused = f"reused {t['reused']} finished stage(s)"
    if t["reused"]:
        reused += f" (they took {t['reused_seconds']:.0f} s when they ran" + (
            f"; {t['reused_without_timing']} without a recorded time)" if t["reused_without_timing"] else ")"
        )
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
    columns = [
        ("run", max([26, *map(len, names)]), "<"),
        ("DPO vs own SFT", 18, ">"),
        (f"vs {baseline} DPO", 18, ">"),
        ("reward accuracy", 18, ">"),
        ("KL step 0", 9, ">"),
        ("eps range", 16, ">"),
    ]
    lines = ["  ".join(f"{name:{align}{width}}" for name, width, align in columns)]
    sizes = set()
    for name, r in zip(names, summary["rows"]):
        eps = f"[{r['epsilon_range'][0]:.2f}, {r['epsilon_range'][1]:.2f}]" if r.get("epsilon_range") else "–"
        kl = f"{r['kl_step0']:.3f}" if "kl_step0" in r else "–"
        cells = [name, wr(r.get("winrate_vs-sft")), wr(r.get(f"winrate_vs-{baseline}")), acc(r), kl, eps]
        lines.append("  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, columns)))
        sizes |= {f"win rates over {w['n']} prompts" for k, w in r.items() if k.startswith("winrate_") and w}
        if r.get("reward_accuracy"):
            sizes.add(f"reward accuracy over {r['reward_accuracy']['n']} pairs")
    if sizes:
        lines.append(
            "95% intervals (win rates: Bonett-Price, ties as their own outcome; reward accuracy: Wilson); n: "
            + ", ".join(sorted(sizes))
            + "; what each comparison can detect, from its own ties and "
            "disagreements, is in the reading"
        )
    return "\n".join(lines)


def _seed_text(entry: dict) -> str:
    e = entry["estimate"]
    test = f"sign test p = {e['p_value']:.2g}" if "sign" in (e.get("test") or "") else f"p = {e['p_value']:.2g}"
    counts = f", {entry['wins']} W / {entry['ties']} T / {entry['losses']} L" if "wins" in entry else ""
    return f"{estimates.interval_text(e, 2 if counts else 3)}{counts} ({test})"


def _group_line(what: str, group: dict, scale: float = 1.0) -> str:
    """One reading line: each seed's estimate and verdict, then the pooled one (or why there is none)."""
    seeds = group["per_seed"]
    if len(seeds) == 1:
        return f"{what}: {_seed_text(seeds[0])}: {verdict(seeds[0]['estimate'])}; {estimates.ONE_SEED}"
    shown = "; ".join(f"seed {s['seed']} {_seed_text(s)}: {verdict(s['estimate']).split(' (')[0]}" for s in seeds)
    pooled = group["pooled"]
    tail = (
        (f"pooled {estimates.interval_text(pooled)} ({pooled['test']}, p = {pooled['p_value']:.2g}): {verdict(pooled)}")
        if pooled
        else f"not pooled: {group['pooled_note']}"
    )
    return f"{what}, {len(seeds)} seeds: {shown}; {tail}"


def readings(summary: dict, baseline: str) -> list[str]:
    """Sentences generated from the estimates of the summary (:mod:`crrelu_llm.reporting.estimates`),
    one per arm and comparison, each seed's and the pooled one: what these runs can and cannot say."""
    lines = [positive] if (positive := positive_control(summary)) else []
    several_betas = len({g["beta"] for g in summary.get("win_rates", [])}) > 1
    for key, what in (("vs-sft", "DPO model vs its own SFT start"), (f"vs-{baseline}", f"vs the {baseline} arm")):
        for group in summary.get("win_rates", []):
            if group["comparison"] == key:
                beta = f" (beta {group['beta']:g})" if several_betas else ""
                lines.append(_group_line(f"{group['arm']} {what}{beta}", group))
    lines += [_accuracy_line(group) for group in summary.get("reward_accuracy", [])]
    return lines


def positive_control(summary: dict) -> str | None:
    """The first line of every reading: did the instrument see the effect the experiment is built
    on? DPO against its own SFT start, per arm (pooled over seeds, with the count of seeds in
    which it was detected), and the benchmark's change from SFT to DPO beside it."""
    groups = [g for g in summary.get("win_rates", []) if g["comparison"] == "vs-sft"]
    if not groups:
        return None
    several_betas = len({g["beta"] for g in groups}) > 1
    parts = []
    for g in groups:
        e = g["pooled"] if g["seeds"] > 1 and g["pooled"] else g["per_seed"][0]["estimate"]
        status = ("detected" if e["value"] > 0.5 else "detected, and DPO is worse") if e["detected"] else "not detected"
        up = sum(s["estimate"]["detected"] and s["estimate"]["value"] > 0.5 for s in g["per_seed"])
        seeds = f", detected in {up} of {g['seeds']} seeds" if g["seeds"] > 1 else f", sign test p = {e['p_value']:.2g}"
        beta = f" (beta {g['beta']:g})" if several_betas else ""
        parts.append(
            f"{g['arm']}{beta} {status} (n = {e['n']}, {estimates.interval_text(e)}{seeds}"
            f"{_benchmark_change(summary, g)})"
        )
    return "positive control, DPO vs its own SFT start, per arm: " + "; ".join(parts)


def _benchmark_change(summary: dict, group: dict) -> str:
    """``; crrelu_arith_mc +7.8 points [+3.5, +12.1]`` per seed: DPO minus SFT, lm-eval's standard
    errors combined as independent (its per-item outcomes are not kept: the worst case)."""
    rows = {(r["arm"], r["stage"]): r for r in summary.get("help_or_harm") or []}
    steps = {(r["arm"], r["beta"], r["seed"]): r.get("step") for r in summary.get("rows") or []}
    sft = rows.get((group["arm"], "SFT"))
    shown = []
    for s in group["per_seed"]:
        dpo = rows.get((group["arm"], steps.get((group["arm"], group["beta"], s["seed"]))))
        for task, b in (dpo or {}).get("benchmarks", {}).items():
            a = (sft or {}).get("benchmarks", {}).get(task)
            if a and a["stderr"] is not None and b["stderr"] is not None:
                diff, half = b["value"] - a["value"], 1.96 * (a["stderr"] ** 2 + b["stderr"] ** 2) ** 0.5
                seed = f"seed {s['seed']} " if group["seeds"] > 1 else ""
                shown.append(
                    f"{seed}{task} {100 * diff:+.1f} points [{100 * (diff - half):+.1f}, {100 * (diff + half):+.1f}]"
                )
    return ("; benchmark after DPO minus after SFT: " + ", ".join(shown)) if shown else ""


def _accuracy_line(group: dict) -> str:
    what = f"{group['arm']} vs {group['baseline']}, reward accuracy (paired on the same pairs)"

    def points(e):
        lo, hi = e["interval"]
        return f"{100 * e['value']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"

    seeds = group["per_seed"]
    if len(seeds) == 1:
        e = seeds[0]["estimate"]
        return f"{what}: {points(e)} (McNemar p = {e['p_value']:.2g}): {verdict(e)}; {estimates.ONE_SEED}"
    shown = "; ".join(f"seed {s['seed']} {points(s['estimate'])}" for s in seeds)
    pooled = group["pooled"]
    return (
        f"{what}, {len(seeds)} seeds: {shown}; pooled {points(pooled)} (p = {pooled['p_value']:.2g}): {verdict(pooled)}"
    )


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
    width = max(8, *(len(r["arm"]) + 2 for r in rows))
    head = (
        f"{'arm':<{width}}{'stage':<22}{'KL to original':>15}"
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
            f"{r['arm']:<{width}}{r['stage']:<22}{kl:>15}"
            + "".join(f"{c:>20}" for c in cells)
            + f"{eps(r['epsilon_learned_mean']):>13}{eps(r['epsilon_least_squares_mean']):>9}"
        )
    sizes = sorted({b["n"] for r in rows for b in r["benchmarks"].values() if b["n"]})
    if sizes:
        lines.append(
            "benchmarks: lm-eval accuracy ± standard error over "
            + ", ".join(
                f"n={n} items (two models must differ by {100 * detectable_difference(n):.1f} points to be told apart "
                "in the worst case: independent samples, p = 1/2)"
                for n in sizes
            )
            + "; eps: means over layers"
        )
    return "\n".join(lines)
