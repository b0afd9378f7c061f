"""The report's help-or-harm part: per arm and stage (step 0, after recovery, after SFT, after
DPO), the drift to the original, capability benchmarks and activation probes, each model's
numbers read from its ``eval/`` directory, plus per-layer probe plots.

:func:`crrelu_llm.reporting.report.compare` calls :func:`collect` with the stages it knows (the experiment
runner passes every stage of every arm; ``crrelu-llm compare`` passes the runs it was given).
"""

from __future__ import annotations

from pathlib import Path

from crrelu_llm.evaluation.results import BENCHMARK, DRIFT, PROBE, estimates, eval_dir, read
from crrelu_llm.stats import detectable_difference


def _read(path: Path):
    return read(path) if path.exists() else None


def collect(stages: dict[str, dict[str, Path]], eval_dirs: dict[str, Path] | None = None) -> list[dict]:
    """One row per (arm, stage, model) with what its ``eval/`` holds. ``eval_dirs`` maps a model
    to the directory its results went to when that is not ``MODEL/eval`` (a hub model)."""
    from crrelu_llm.evaluation.benchmark import headline

    rows = []
    for arm, by_stage in stages.items():
        for stage, model in by_stage.items():
            folder = Path((eval_dirs or {}).get(str(model)) or eval_dir(model))
            row = {"arm": arm, "stage": stage, "model": str(model), "benchmarks": {}}
            drift = _read(DRIFT.in_folder(folder))
            if drift:
                row["kl_to_original"] = {
                    "value": drift["kl_patched_original"],
                    "tokens": drift["tokens"],
                    "from": str(DRIFT.in_folder(folder)),
                }
            for file in BENCHMARK.files(folder):
                result = _read(file)
                shown = headline(result)
                if shown:
                    name, metric = shown
                    row["benchmarks"][result["task"]] = {
                        "metric": name,
                        **metric,
                        "n": result["n"],
                        "num_fewshot": result["num_fewshot"],
                        "items": result.get("items"),
                        "from": str(file),
                    }
            probe = _read(PROBE.in_folder(folder))
            if probe:
                row["probe"] = {"layers": probe["layers"], "from": str(PROBE.in_folder(folder))}
                mean = estimates("probe", probe).get("entropy_change_mean")  # the mechanism, mean over layers
                if mean:
                    row["entropy_change_mean"] = mean["value"]
            if drift or row["benchmarks"] or probe:
                rows.append(row)
    return rows


def benchmark_contrasts(rows: list[dict], baseline: str | None = None, starts: dict | None = None) -> list[dict]:
    """Every benchmark contrast the help-or-harm table implies, each with its own interval, test and
    detectable difference: within an arm, each stage against the stage it started from (``starts``:
    ``(arm, stage) -> stage``, an experiment's lineage; none without it); across arms, each arm
    against ``baseline`` at the same stage. Paired over the items both models answered (McNemar's
    exact test, :func:`crrelu_llm.stats.paired_difference`) where both results keep per-item
    outcomes; else the two standard errors combined as independent, and said so."""
    out = []
    at = {(r["arm"], r["stage"]): r for r in rows}
    pairs = [
        (row, at[(row["arm"], start)], "stage")
        for row in rows
        if (start := (starts or {}).get((row["arm"], row["stage"]))) and (row["arm"], start) in at
    ]
    pairs += [
        (row, at[(baseline, row["stage"])], "arm")
        for row in rows
        if row["arm"] != baseline and (baseline, row["stage"]) in at
    ]
    for row, other, kind in pairs:
        for task in sorted(set(row["benchmarks"]) & set(other["benchmarks"])):
            estimate = benchmark_difference(row["benchmarks"][task], other["benchmarks"][task])
            if estimate:
                out.append(
                    {
                        "task": task,
                        "kind": kind,
                        "arm": row["arm"],
                        "stage": row["stage"],
                        "against": {"arm": other["arm"], "stage": other["stage"]},
                        "estimate": estimate,
                    }
                )
    return out


def contrast_name(c: dict) -> str:
    """``crrelu - gelu at SFT`` (across arms) or ``crrelu: SFT - step 0`` (within an arm)."""
    if c["kind"] == "arm":
        return f"{c['arm']} - {c['against']['arm']} at {c['stage']}"
    return f"{c['arm']}: {c['stage']} - {c['against']['stage']}"


def benchmark_difference(a: dict, b: dict) -> dict | None:
    """``a - b`` for two models' results on one task (help-or-harm entries): paired where both
    keep per-item 0/1 outcomes on the same items, else independent; None without standard errors."""
    from scipy.stats import norm

    from crrelu_llm.evaluation.benchmark import paired_items
    from crrelu_llm.stats import Z95, Estimate, paired_difference

    if a["metric"] == b["metric"]:
        items = paired_items(a, b, a["metric"])
        if items and all(v in (0.0, 1.0) for side in items for v in side):
            return paired_difference(*items).to_dict()
    if a.get("stderr") is None or b.get("stderr") is None:
        return None
    value, se = a["value"] - b["value"], (a["stderr"] ** 2 + b["stderr"] ** 2) ** 0.5
    n = min(a["n"], b["n"])
    return Estimate(
        value=value,
        interval=(value - Z95 * se, value + Z95 * se),
        standard_error=se,
        n=n,
        p_value=float(2 * norm.sf(abs(value) / se)) if se else 1.0,
        test="z test, independent samples",
        interval_method="lm-eval standard errors combined as independent (no per-item outcomes kept)",
        null=0.0,
        detectable=detectable_difference(n),
        detectable_basis="independent samples, p = 1/2: the worst case",
    ).to_dict()


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def markdown(rows: list[dict], contrasts: list[dict] = ()) -> list[str]:
    if not rows:
        return []
    tasks = sorted({t for r in rows for t in r["benchmarks"]})
    described = ["KL to the original is per token on the evaluation responses (– for the original itself)."]
    if tasks:
        described.append("Benchmarks are lm-eval's metric ± its standard error.")
    described.append(
        "eps columns are means over layers (learned, and the least-squares value that best imitates "
        "the original activation on the layer's own inputs)."
    )
    lines = [
        "## Help or harm: each arm at every stage",
        "",
        " ".join(described),
        "",
        "| arm | stage | KL to original | "
        + " | ".join(tasks)
        + (" | " if tasks else "")
        + "eps learned | eps least-squares |",
        "|---|---|---|" + "---|" * len(tasks) + "---|---|",
    ]
    for r in rows:
        kl = f"{r['kl_to_original']['value']:.4f}" if "kl_to_original" in r else "–"
        cells = []
        for task in tasks:
            b = r["benchmarks"].get(task)
            cells.append(
                f"{b['value']:.3f} ± {b['stderr']:.3f} (n={b['n']})"
                if b and b["stderr"] is not None
                else (f"{b['value']:.3f} (n={b['n']})" if b else "–")
            )
        layers = r.get("probe", {}).get("layers", [])
        learned = _mean(layer["epsilon"] for layer in layers)
        fitted = _mean(layer["least_squares_epsilon"] for layer in layers)
        lines.append(
            f"| {r['arm']} | {r['stage']} | {kl} | "
            + " | ".join(cells)
            + (" | " if cells else "")
            + (f"{learned:.4f}" if learned is not None else "–")
            + " | "
            + (f"{fitted:.4f}" if fitted is not None else "–")
            + " |"
        )
    if contrasts:
        lines += [
            "",
            "Benchmark contrasts, each on the same items: within an arm, a stage against the one it started "
            "from; across arms, an arm against the baseline at the same stage. `detects`: the difference this "
            "contrast would see with 80% power at the 5% level, from its own share of disagreeing items.",
            "",
            "| contrast | task | difference (points) | p | test | detects (points) |",
            "|---|---|---|---|---|---|",
        ]
        for c in contrasts:
            e, (lo, hi) = c["estimate"], c["estimate"]["interval"]
            name = contrast_name(c)
            detects = f"{100 * e['detectable']:.1f}" if e.get("detectable") is not None else "–"
            lines.append(
                f"| {name} | {c['task']} | {100 * e['value']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                f"{e['p_value']:.2g} | {e['test']} | {detects} |"
            )
    sources = sorted(
        {f"`{b['from']}`" for r in rows for b in r["benchmarks"].values()}
        | {f"`{r['probe']['from']}`" for r in rows if "probe" in r}
        | {f"`{r['kl_to_original']['from']}`" for r in rows if "kl_to_original" in r}
    )
    if sources:
        lines += ["", "Sources: " + ", ".join(sources)]
    return [*lines, ""]


def _cells(layers: list[dict], value: str, share: str | None = None, form: str = "+.4f") -> str:
    """One cell of per-layer values (with their share in brackets), '–' where none was measured; an
    exact entropy change also gives the share of its inputs the arm folds (not exact there)."""

    def folded(layer) -> str:
        share = layer.get("entropy_change_folded") or 0
        return f", {100 * share:.1f}% folded" if value == "entropy_change" and share >= 0.0005 else ""

    cells = [
        f"{layer[value]:{form}}"
        + (f" [{layer[share]:.2f}{folded(layer)}]" if share and layer.get(share) is not None else "")
        for layer in layers
        if layer.get(value) is not None
    ]
    return ", ".join(cells) or "–"


def mechanism(rows: list[dict], outcomes: dict[str, str] | None = None) -> list[str]:
    """report.md's "Mechanism" section: per arm and stage, the output entropy each layer's
    correction adds to its base (exact, nats, above the base's turning point; binned below it),
    the cosine of its shape with EAFO's entropy-lowering direction, and the sign of its learned
    parameter; then whether training moved it toward lower or higher entropy, beside each arm's
    outcome (``outcomes``: arm -> a short text of its estimates). See :mod:`crrelu_llm.ops.entropy`."""
    probed = [r for r in rows if r.get("entropy_change_mean") is not None]
    if not probed:
        return []
    lines = [
        "## Mechanism: the output entropy each correction adds to its base",
        "",
        "Per layer, on the layer's own inputs, in nats: exactly where the base is one-to-one (above its turning "
        "point; share of inputs in brackets), binned at one common width below it. Negative is the paper's claim "
        "(a correction that lowers output entropy). cosine: the correction's shape against EAFO's entropy-lowering "
        "direction for the layer's inputs (Gaussian fit); eps x cosine > 0 points toward lower entropy, to first "
        "order. eps: the learned parameter. folded: the share of those inputs where the arm's derivative has turned "
        "(the correction moved the turning point or folds the map), where the exact figure does not hold.",
        "",
        "| arm | stage | entropy change per layer [share] | mean | binned, below the turning point [share] "
        "| cosine per layer | eps per layer |",
        "|---|---|---|---|---|---|---|",
    ]
    means, lowering = {}, {}
    for r in probed:
        layers = [layer for layer in r["probe"]["layers"] if layer.get("entropy_change") is not None]
        key = (r["arm"], r["stage"])
        means[key] = r["entropy_change_mean"]
        signed = [
            layer["epsilon"] * layer["correction_cosine"]
            for layer in layers
            if layer.get("epsilon") is not None and layer.get("correction_cosine") is not None
        ]
        lowering[key] = (sum(v > 0 for v in signed), len(signed))
        lines.append(
            f"| {r['arm']} | {r['stage']} | {_cells(layers, 'entropy_change', 'entropy_change_share')} "
            f"| {means[key]:+.4f} | {_cells(layers, 'entropy_change_binned', 'entropy_change_binned_share')} "
            f"| {_cells(layers, 'correction_cosine', form='+.2f')} | {_cells(layers, 'epsilon', form='+.3f')} |"
        )
    lines.append("")
    for arm in dict.fromkeys(a for a, _ in means):
        stages = [(s, m) for (a, s), m in means.items() if a == arm]
        (first, start), (last, end) = stages[0], stages[-1]
        moved = "lower" if end < start else "higher" if end > start else "no"
        toward, of = lowering[(arm, last)]
        direction = f"; at {last}, eps x cosine points toward lower entropy in {toward} of {of} layers" if of else ""
        outcome = f"; outcome: {outcomes[arm]}" if outcomes and arm in outcomes else ""
        lines.append(
            f"- {arm}: from {first} to {last} training moved the correction toward {moved} entropy "
            f"({start:+.4f} -> {end:+.4f} nats, mean over layers){direction}{outcome}"
        )
    return [*lines, ""]


def help_or_harm(stage_rows: list[dict]) -> list[dict]:
    """Per arm and stage (the report's rows, :func:`crrelu_llm.reporting.report_stages.collect`): KL
    to the original, benchmark results, mean learned and least-squares eps, mean entropy change."""
    rows = []
    for r in stage_rows:
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
                "entropy_change_mean": r.get("entropy_change_mean"),
            }
        )
    return rows


def mechanism_reading(stage_rows: list[dict], tests: list[dict], baseline: str) -> str | None:
    """The reading's line on the paper's mechanism beside the outcome: per corrected arm, which way
    training moved its output entropy against its base (first to last stage, mean over layers), and
    its reward accuracy against ``baseline`` after preference tuning (``tests``: the multiplicity
    family, Holm). None without such a measurement."""
    measured: dict[str, list[tuple[str, float]]] = {}
    for r in stage_rows:
        if r.get("entropy_change_mean") is not None:
            measured.setdefault(r["arm"], []).append((r["stage"], r["entropy_change_mean"]))
    if not measured:
        return None
    parts = []
    for arm, stages in measured.items():
        start, end = stages[0][1], stages[-1][1]
        moved = "unchanged" if abs(end - start) < 5e-4 else "lower" if end < start else "higher"
        text = f"{arm} {start:+.3f} -> {end:+.3f} ({moved})"
        accuracy = next((t for t in tests if t["kind"] == "reward accuracy" and t["arm"] == arm), None)
        if accuracy:
            text += f", acc. {100 * accuracy['value']:+.1f}" + ("*" if accuracy["detected_holm"] else "")
        parts.append(text)
    return f"mechanism (entropy vs own base, nats; reward acc. vs {baseline}, points): " + "; ".join(parts)
