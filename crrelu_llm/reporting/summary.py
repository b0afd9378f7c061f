"""Views of an experiment's evidence record (``report/report.json``, built by
:mod:`crrelu_llm.experiments.evidence`): ``summary.json`` and the console (one row per preference
run, the reading, the help-or-harm table and the benchmark contrasts), each number with its
sample size and what that size can detect. Every estimate is read from the record, where
:func:`crrelu_llm.reporting.report.compare` computed it once; :func:`multiplicity` adds Holm's
adjustment of the record's own p-values.
"""

from __future__ import annotations

from pathlib import Path

from crrelu_llm.reporting import estimates
from crrelu_llm.reporting.report_stages import contrast_name, mechanism_reading
from crrelu_llm.stats import holm, verdict


def estimates_by_file(report: dict) -> dict:
    """Where each result file's estimate sits in the report: ``{"label", "key", "seed", "from"}``
    (``key``: the comparison of a win rate, or ``reward_accuracy``)."""
    found = {}
    for label, arm in report["arms"].items():
        for key, group in (arm.get("win_rates") or {}).items():
            for entry in group["per_seed"]:
                found[entry["from"]] = {"label": label, "key": key, "seed": entry["seed"], "from": entry["from"]}
        for entry in (arm.get("reward_accuracy") or {}).get("per_seed", []):
            found[entry["from"]] = {
                "label": label,
                "key": "reward_accuracy",
                "seed": entry["seed"],
                "from": entry["from"],
            }
    return found


def _group(record: dict, ref: dict) -> dict:
    """The record's group of estimates (every seed, pooled) that ``ref`` points into."""
    arm = record["arms"][ref["label"]]
    return arm["reward_accuracy"] if ref["key"] == "reward_accuracy" else arm["win_rates"][ref["key"]]


def _entry(record: dict, ref: dict) -> dict:
    return next(e for e in _group(record, ref)["per_seed"] if e["from"] == ref["from"])


def _winrate_cell(record: dict, ref: dict) -> dict:
    entry = _entry(record, ref)
    e = entry["estimate"]
    return {
        "win_rate": e["value"],
        "interval": e["interval"],
        **{k: entry[k] for k in ("wins", "ties", "losses", "n")},
        "sign_test_p": e["p_value"],
        "estimate": e,
        "length_controlled": entry.get("length_controlled"),
        "stage": ref["stage"],
        "from": ref["from"],
    }


def summary_view(record: dict) -> dict:
    """What ``summary.json`` holds and the console prints: the record's estimates, laid out per
    preference run and per comparison (nothing recomputed)."""
    runs = record["runs"]
    rows = []
    for r in runs["rows"]:
        row = {k: r[k] for k in ("arm", "run", "stage", "step", "seed", "beta", "epsilon_range")}
        if "reward_accuracy" in r:
            ref, entry = r["reward_accuracy"], _entry(record, r["reward_accuracy"])
            e = entry["estimate"]
            row["reward_accuracy"] = {
                "accuracy": e["value"],
                "interval": e["interval"],
                "n": e["n"],
                "ties": entry.get("ties"),
                "stage": ref["stage"],
                "from": ref["from"],
            }
        for key in [k for k in r if k.startswith("winrate_")]:
            row[key] = _winrate_cell(record, r[key])
        if r.get("kl_step0"):
            row["kl_step0"] = r["kl_step0"]["value"]
            row["kl_step0_from"] = {k: r["kl_step0"][k] for k in ("stage", "from")}
        rows.append(row)
    return {
        "rows": rows,
        "report": record["experiment"]["report"],
        "seconds": record["experiment"]["seconds"],
        "stage_totals": record["experiment"]["stage_totals"],
        "win_rates": [{k: g[k] for k in ("arm", "beta", "comparison")} | _group(record, g) for g in runs["win_rates"]],
        "reward_accuracy": [
            {k: g[k] for k in ("arm", "baseline", "beta")} | record["reward_accuracy_vs_baseline"][g["label"]]
            for g in runs["reward_accuracy"]
        ],
        "help_or_harm": record.get("help_or_harm") or [],
        "benchmark_contrasts": record.get("benchmark_contrasts") or [],
        "factorial": record.get("factorial"),
        "multiplicity": record.get("multiplicity"),
    }


def headline(group: dict) -> dict:
    """The estimate a reading line stands on: pooled over seeds where there are several, else the seed's."""
    return group["pooled"] if group.get("seeds", 1) > 1 and group.get("pooled") else group["per_seed"][0]["estimate"]


def multiplicity(record: dict) -> dict:
    """Holm's adjustment over the family of tests the reading reports: every win-rate comparison,
    every paired reward-accuracy difference and every benchmark contrast. Each test keeps what it
    is (kind, arm, comparison or contrast), its estimate and both p-values: the opening lines and
    the trackers' table read them from here."""
    view = summary_view({**record, "multiplicity": None})

    def entry(test, kind, estimate, seeds=1, **what):
        lo, hi = estimate["interval"]
        value = {"value": estimate["value"], "low": lo, "high": hi, "n": estimate["n"], "seeds": seeds}
        return {"test": test, "kind": kind, **what, **value, "p": estimate["p_value"]}

    family = [
        entry(test_name(g), "win rate", headline(g), g["seeds"], arm=g["arm"], comparison=g["comparison"])
        for g in view["win_rates"]
    ]
    family += [
        entry(f"{g['arm']} - {g['baseline']}", "reward accuracy", headline(g), g["seeds"], arm=g["arm"])
        for g in view["reward_accuracy"]
    ]
    family += [
        entry(f"{contrast_name(c)} ({c['task']})", "benchmark", c["estimate"], arm=c["arm"], contrast=c["kind"])
        | {"stage": c["stage"], "task": c["task"]}
        for c in view["benchmark_contrasts"]
    ]
    family = [t for t in family if t["p"] is not None]
    adjusted = holm([t["p"] for t in family])
    return {
        "method": "Holm (statsmodels multipletests) over every test the reading reports, family-wise 5%",
        "tests": [
            {**t, "p_holm": a, "detected": t["p"] < 0.05, "detected_holm": a < 0.05} for t, a in zip(family, adjusted)
        ],
    }


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


def opening(summary: dict, baseline: str) -> list[str]:
    """The reading in three lines a person reads first (each under about 120 characters): the
    positive control, the activation comparison, help or harm (and, where probes measured it, the
    mechanism beside the outcome); every verdict after Holm's
    adjustment over the family (:func:`multiplicity`, whose tests say what each one is). The
    details are in report.md."""
    tests = (summary.get("multiplicity") or {}).get("tests", [])
    finals = {r["arm"]: r["step"] for r in summary.get("rows", [])}
    lines = []
    control = [t for t in tests if t["kind"] == "win rate" and t["comparison"] == "vs-sft"]
    if control:
        up = [t["arm"] for t in control if t["detected_holm"] and t["value"] > 0.5]
        lines.append(
            f"positive control: DPO beats its own SFT start in {len(up)} of {len(control)} arms"
            + (f" ({', '.join(up)})" if up else "")
            + ("" if len(up) == len(control) else "; where it does not, the instrument cannot see DPO's effect")
        )

    def against_baseline(t) -> bool:  # after preference tuning, against the baseline arm
        return (
            (t["kind"] == "win rate" and t["comparison"] == f"vs-{baseline}")
            or t["kind"] == "reward accuracy"
            or (t["kind"] == "benchmark" and t["contrast"] == "arm" and t["stage"] == finals.get(t["arm"]))
        )

    compared = [t for t in tests if against_baseline(t)]
    arms = list(dict.fromkeys(t["arm"] for t in compared if t["kind"] != "benchmark"))
    if arms:
        differ = [arm for arm in arms if any(t["detected_holm"] for t in compared if t["arm"] == arm)]
        same = [a for a in arms if a not in differ]
        lines.append(
            f"activation vs {baseline} after {_objective_of(finals)}: "
            + (f"{', '.join(differ)} differ" if differ else "")
            + ("; " if differ and same else "")
            + (f"no difference detected for {', '.join(same)}" if same else "")
            + " (win rate, reward accuracy, benchmark; Holm)"
        )
    arm_contrasts = [t for t in tests if t["kind"] == "benchmark" and t["contrast"] == "arm"]
    if arm_contrasts:
        task, parts = arm_contrasts[0]["task"], []
        for shown, at in (("step 0", lambda t: t["stage"] == "step 0"), (f"after {_objective_of(finals)}", None)):
            at = at or (lambda t: t["stage"] == finals.get(t["arm"]))
            cells = [
                f"{t['arm']} {100 * t['value']:+.1f}" + ("*" if t["detected_holm"] else "")
                for t in arm_contrasts
                if t["task"] == task and at(t)
            ]
            if cells:
                parts.append(f"{shown} {', '.join(cells)}")
        lines.append(f"help or harm ({task} vs {baseline}, points; * Holm): " + "; ".join(parts))
    mechanism = mechanism_reading(summary.get("help_or_harm") or [], tests, baseline)
    return [*lines, mechanism] if mechanism else lines


def test_name(group: dict) -> str:
    return f"{group['arm']} {group['comparison']}" + (f" (beta {group['beta']:g})" if group.get("beta") else "")


def _objective_of(finals: dict) -> str:
    """``DPO`` (the first word of the preference stages' names), or a phrase when arms differ."""
    labels = {step.split(" ")[0] for step in finals.values() if step}
    return labels.pop() if len(labels) == 1 else "preference tuning"


def readings(summary: dict, baseline: str) -> list[str]:
    """Sentences generated from the estimates of the summary (:mod:`crrelu_llm.reporting.estimates`),
    one per arm and comparison, each seed's and the pooled one: what these runs can and cannot say."""
    lines = [positive] if (positive := positive_control(summary)) else []
    several_betas = len({g["beta"] for g in summary.get("win_rates", [])}) > 1
    comparisons = (
        ("vs-sft", "DPO model vs its own SFT start"),
        (f"vs-{baseline}", f"vs the {baseline} arm"),
        ("vs-reference", "vs the reference outputs"),
    )
    for key, what in comparisons:
        for group in summary.get("win_rates", []):
            if group["comparison"] == key:
                beta = f" (beta {group['beta']:g})" if several_betas else ""
                lines.append(_group_line(f"{group['arm']} {what}{beta}", group))
    lines += [_accuracy_line(group) for group in summary.get("reward_accuracy", [])]
    family = (summary.get("multiplicity") or {}).get("tests", [])
    if family:
        kept = [t["test"] for t in family if t["detected_holm"]]
        lost = [t["test"] for t in family if t["detected"] and not t["detected_holm"]]
        lines.append(
            f"multiplicity: Holm over the {len(family)} tests of this reading and the benchmark contrasts "
            f"(family-wise 5%): {len(kept)} stay detected"
            + (f" ({'; '.join(kept)})" if kept else "")
            + (f"; {len(lost)} detected alone are not after the adjustment ({'; '.join(lost)})" if lost else "")
        )
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
    """``; crrelu_arith_mc +7.8 points [+3.5, +12.1]`` per seed: the preference run minus the start it
    was tuned from, on the same items (the benchmark contrast within the arm)."""
    steps = {(r["arm"], r["beta"], r["seed"]): r.get("step") for r in summary.get("rows") or []}
    shown = []
    for s in group["per_seed"]:
        step = steps.get((group["arm"], group["beta"], s["seed"]))
        for c in summary.get("benchmark_contrasts") or []:
            if c["kind"] == "stage" and c["arm"] == group["arm"] and c["stage"] == step:
                seed = f"seed {s['seed']} " if group["seeds"] > 1 else ""
                shown.append(f"{seed}{c['task']} {points(c['estimate'])}")
    return ("; benchmark after DPO minus its start: " + ", ".join(shown)) if shown else ""


def _accuracy_line(group: dict) -> str:
    what = f"{group['arm']} vs {group['baseline']}, reward accuracy (paired on the same pairs)"
    seeds = group["per_seed"]
    if len(seeds) == 1:
        e = seeds[0]["estimate"]
        return f"{what}: {points(e)} (McNemar p = {e['p_value']:.2g}): {verdict(e)}; {estimates.ONE_SEED}"
    shown = "; ".join(f"seed {s['seed']} {points(s['estimate'])}" for s in seeds)
    pooled = group["pooled"]
    return (
        f"{what}, {len(seeds)} seeds: {shown}; pooled {points(pooled)} (p = {pooled['p_value']:.2g}): {verdict(pooled)}"
    )


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
            + ", ".join(f"n={n} items" for n in sizes)
            + "; eps: means over layers"
        )
    return "\n".join(lines + format_contrasts(summary.get("benchmark_contrasts") or []))


def points(e: dict) -> str:
    lo, hi = e["interval"]
    return f"{100 * e['value']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"


PAIRED = "McNemar's exact test on the discordant items"


def format_contrasts(contrasts: list[dict]) -> list[str]:
    """The benchmark contrasts, one line each: difference, interval, p, what this n detects."""
    if not contrasts:
        return []
    width = max(len(contrast_name(c)) for c in contrasts) + 2
    tasks = sorted({c["task"] for c in contrasts})
    lines = ["", "benchmark contrasts" + (f" ({tasks[0]})" if len(tasks) == 1 else "")]
    for c in contrasts:
        e = c["estimate"]
        task = f" {c['task']}" if len(tasks) > 1 else ""
        detectable = f"  detects {100 * e['detectable']:.1f}" if e.get("detectable") is not None else ""
        lines.append(f"  {contrast_name(c):<{width}}{task}{points(e):>28}  p = {e['p_value']:.2g}{detectable}")
    methods = {c["estimate"]["test"] for c in contrasts}
    said = ["paired on the same items, McNemar's exact test"] if PAIRED in methods else []
    if methods - {PAIRED}:
        said.append("results without per-item outcomes: z tests on independent samples (rerun them to pair)")
    lines.append("  " + "; ".join(said) + "; detects: the difference 80% power would see")
    return lines
