"""The report's help-or-harm part: per arm and stage (step 0, after recovery, after SFT, after
DPO), the drift to the original, capability benchmarks and activation probes, each model's
numbers read from its ``eval/`` directory, plus per-layer probe plots.

:func:`crrelu_llm.reporting.report.compare` calls :func:`collect` with the stages it knows (the experiment
runner passes every stage of every arm; ``crrelu-llm compare`` passes the runs it was given).
"""

from __future__ import annotations

import json
from pathlib import Path

from crrelu_llm.errors import ReportError
from crrelu_llm.stats import detectable_difference


def read_result(path: Path):
    """A result file's JSON; a damaged file is a :class:`ReportError` naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err})") from None


def _read(path: Path):
    return read_result(path) if path.exists() else None


def collect(stages: dict[str, dict[str, Path]], eval_dirs: dict[str, Path] | None = None) -> list[dict]:
    """One row per (arm, stage, model) with what its ``eval/`` holds. ``eval_dirs`` maps a model
    to the directory its results went to when that is not ``MODEL/eval`` (a hub model)."""
    from crrelu_llm.evaluation.benchmark import headline
    from crrelu_llm.evaluation.evaluate import eval_dir

    rows = []
    for arm, by_stage in stages.items():
        for stage, model in by_stage.items():
            folder = Path((eval_dirs or {}).get(str(model)) or eval_dir(model))
            row = {"arm": arm, "stage": stage, "model": str(model), "benchmarks": {}}
            drift = _read(folder / "drift.json")
            if drift:
                row["kl_to_original"] = {
                    "value": drift["kl_patched_original"],
                    "tokens": drift["tokens"],
                    "from": str(folder / "drift.json"),
                }
            for file in sorted(folder.glob("benchmark-*.json")):
                result = _read(file)
                shown = headline(result)
                if shown:
                    name, metric = shown
                    row["benchmarks"][result["task"]] = {
                        "metric": name,
                        **metric,
                        "n": result["n"],
                        "num_fewshot": result["num_fewshot"],
                        "from": str(file),
                    }
            probe = _read(folder / "probe.json")
            if probe:
                row["probe"] = {"layers": probe["layers"], "from": str(folder / "probe.json")}
            if drift or row["benchmarks"] or probe:
                rows.append(row)
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def markdown(rows: list[dict]) -> list[str]:
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
    sizes = sorted({b["n"] for r in rows for b in r["benchmarks"].values() if b["n"]})
    if sizes:
        lines += [
            "",
            "Smallest benchmark difference between two models that these sample sizes detect (95% "
            "confidence, 80% power; the worst case, p = 1/2 and independent samples, since lm-eval keeps no "
            "per-item outcomes here): "
            + ", ".join(f"{100 * detectable_difference(n):.1f} points at n={n}" for n in sizes)
            + ".",
        ]
    sources = sorted(
        {f"`{b['from']}`" for r in rows for b in r["benchmarks"].values()}
        | {f"`{r['probe']['from']}`" for r in rows if "probe" in r}
        | {f"`{r['kl_to_original']['from']}`" for r in rows if "kl_to_original" in r}
    )
    if sources:
        lines += ["", "Sources: " + ", ".join(sources)]
    return [*lines, ""]
