"""An experiment's evidence, computed once into one record (``report/report.json``).

The stage declaration (:mod:`crrelu_llm.experiments.stages`) says what each result file is: which
arm, stage, seed and comparison. This module reads that and hands :mod:`crrelu_llm.reporting`
plain data: run directories, the lineage of stages, the 2x2 cells. Reporting computes every
estimate once (:func:`crrelu_llm.reporting.report.compare`), and the views (the console, ``summary.json``,
``report.md``, the plots, the trackers) are drawn from the record, none recomputing an estimate.

    run_experiment -> record(exp, declaration)
        report_stages.collect        every model's drift, benchmarks, probes   (read once)
        report.compare               per seed, pooled, paired, contrasts         (computed once)
        run_index                    which estimate is which run's, and against what
        summary.multiplicity         Holm over the reading's family of tests
        -> report.json, report.md    (reporting.markdown.render(record))
"""

from __future__ import annotations

from pathlib import Path

from crrelu_llm.files import read_json, write_json, write_text_atomic
from crrelu_llm.reporting import factorial, markdown, report_stages, summary
from crrelu_llm.reporting.report import compare


def arm_label(declaration, arm: str, beta: float) -> str:
    """The report's label of an arm's runs at ``beta`` (``arm beta=B`` when the experiment trains several)."""
    several_betas = len({run.beta for run in declaration.preference_runs}) > 1
    return f"{arm} beta={beta:g}" if several_betas else arm


def step0_drift(declaration, arm: str) -> dict | None:
    """The KL of the arm's step-0 model to the original, with its stage and file (None for an
    unpatched arm, whose step 0 is the original itself, or when drift was not evaluated)."""
    for spec in declaration.by_kind("drift"):
        if spec.arm == arm and spec.step == "step 0" and spec.done.exists():
            return {"value": read_json(spec.done)["kl_patched_original"], "stage": spec.name, "from": str(spec.done)}
    return None


def run_index(exp, declaration, report: dict) -> dict:
    """Where each preference run's estimates sit in the record: one row per run (its reward
    accuracy and win rates as references into ``report["arms"]``, KL at step 0, eps range), and
    the groups the reading reads. The declaration says which result is which run's and whether a
    win rate is against the run's own start (``vs-sft``) or against the baseline arm."""
    from crrelu_llm import run_files

    where = summary.estimates_by_file(report)
    rows, judged = [], {}
    for run in declaration.preference_runs:
        row = {
            "arm": run.arm,
            "run": run.model,
            "stage": run.name,
            "step": run.step,
            "seed": run.seed,
            "beta": run.beta,
        }
        for spec in declaration.by_kind("rewards"):
            if spec.model == run.model and str(spec.done) in where:
                row["reward_accuracy"] = {**where[str(spec.done)], "stage": spec.name}
        final = read_json(Path(run.model) / run_files.FINAL_METRICS)
        eps = [v for k, v in final.items() if k.startswith("final_epsilon/") and k[14:].isdigit()]
        row["epsilon_range"] = [min(eps), max(eps)] if eps else None
        start = declaration.start_of(run)
        for spec in declaration.by_kind("winrate"):
            if spec.model == run.model and str(spec.done) in where:
                name = (
                    "vs-sft"
                    if spec.baseline == start
                    else "vs-reference"
                    if spec.baseline == (exp.evaluations.get("winrate") or {}).get("baseline_outputs")
                    else f"vs-{exp.baseline_arm}"
                )
                row[f"winrate_{name}"] = {**where[str(spec.done)], "stage": spec.name}
                ref = where[str(spec.done)]
                judged[(run.arm, run.beta, name)] = {"label": ref["label"], "key": ref["key"]}
        drift = step0_drift(declaration, run.arm)
        if drift:
            row["kl_step0"] = drift
        rows.append(row)
    paired = report.get("reward_accuracy_vs_baseline", {})
    return {
        "baseline_arm": exp.baseline_arm,
        "rows": rows,
        "win_rates": [{"arm": a, "beta": b, "comparison": name, **ref} for (a, b, name), ref in judged.items()],
        "reward_accuracy": [
            {"arm": arm, "baseline": exp.baseline_arm, "beta": beta, "label": label}
            for arm, beta in dict.fromkeys((r.arm, r.beta) for r in declaration.preference_runs)
            if arm != exp.baseline_arm and (label := arm_label(declaration, arm, beta)) in paired
        ],
    }


def factorial_inputs(declaration, factors: dict, baseline: str) -> dict | None:
    """The 2x2 cells' per-item outcomes, read through the declaration: reward accuracy per pair,
    win rate against the baseline arm per prompt, KL at step 0 per example, per seed and beta; and
    which stage holds each cell's preference run (for the benchmarks)."""
    shape = factorial.design(factors, baseline)
    if shape is None:
        return None
    cell_of = {arm: cell for cell, arm in shape["cells"].items()}
    runs = {(r.arm, r.beta, r.seed): r for r in declaration.preference_runs if r.arm in cell_of}
    per_beta = []
    for beta in sorted({b for _, b, _ in runs}):
        seeds = sorted({s for a, b, s in runs if b == beta})
        accuracy, winrate, steps, objectives = [], [], [], set()
        for seed in seeds:
            acc, wr = {}, {}
            base_run = runs.get((baseline, beta, seed))
            for arm, cell in cell_of.items():
                run = runs.get((arm, beta, seed))
                if run is None:
                    continue
                objectives.add(run.command)
                for spec in declaration.by_kind("rewards"):
                    if spec.model == run.model and spec.done.exists():
                        acc[cell] = [float(c) for c in read_json(spec.done).get("correct") or []] or None
                for spec in declaration.by_kind("winrate"):
                    if base_run and spec.model == run.model and spec.baseline == base_run.model and spec.done.exists():
                        wr[cell] = read_json(spec.done)["stats"].get("scores")
            accuracy.append({c: v for c, v in acc.items() if v})
            winrate.append({c: v for c, v in wr.items() if v})
            steps.append({arm: runs[(arm, beta, seed)].step for arm in cell_of if (arm, beta, seed) in runs})
        per_beta.append(
            {
                "beta": beta,
                "seeds": seeds,
                "accuracy": accuracy,
                "winrate": winrate,
                "steps": steps,
                "objectives": objectives,
            }
        )
    drift = {}
    for arm, cell in cell_of.items():
        found = step0_drift(declaration, arm)
        drift[cell] = read_json(found["from"]).get("per_example_kl") if found else None
    return {"shape": shape, "per_beta": per_beta, "drift": drift}


def record(exp, declaration, seconds: float, stage_log: list[dict]) -> dict:
    """The experiment's evidence record: computed once, written to ``report/report.json`` and
    rendered to ``report/report.md``; the console and ``summary.json`` are views of it."""
    rows = report_stages.collect(declaration.models(), declaration.eval_dirs())  # read once, for every part
    runs = declaration.preference_runs
    two_by_two = None
    if exp.factors:
        inputs = factorial_inputs(declaration, exp.factors, exp.baseline_arm)
        two_by_two = factorial.read(inputs, exp.baseline_arm, rows) if inputs else None
    evidence = compare(
        [f"{arm_label(declaration, run.arm, run.beta)}={run.model}" for run in runs],
        declaration.layout.report,
        step0_drift={arm_label(declaration, r.arm, r.beta): step0_drift(declaration, r.arm) for r in runs},
        stages=declaration.models(),
        eval_dirs=declaration.eval_dirs(),
        baseline=arm_label(declaration, exp.baseline_arm, runs[0].beta),
        pairs=[
            {"arm": s.arm, "stage": s.name, "from": str(s.done)}
            for s in declaration.by_kind("pairs")
            if s.done.exists()
        ],
        factorial=two_by_two,
        starts=declaration.starts(),
        stage_rows=rows,
        write=False,
    )
    evidence["experiment"] = {
        "name": exp.name,
        "seconds": round(seconds, 1),
        "stage_totals": summary.stage_totals(stage_log),
        "report": str(declaration.layout.report / "report.md"),
    }
    evidence["runs"] = run_index(exp, declaration, evidence)
    evidence["help_or_harm"] = report_stages.help_or_harm(rows)
    evidence["multiplicity"] = summary.multiplicity(evidence)
    write(evidence, declaration.layout.report)
    send_table(exp, evidence, declaration.layout.tracking)
    return evidence


def send_table(exp, evidence: dict, log_dir: Path) -> None:
    """The record's pooled estimates, one row per comparison, as a table in the trackers any arm's
    recipe names (:func:`crrelu_llm.trackers.log_table`)."""
    from crrelu_llm.trackers import log_table

    names = exp.trackers()
    if not names:
        return
    tests = evidence["multiplicity"]["tests"]  # each test with its estimate (pooled over seeds where several)
    keys = ("kind", "test", "p", "p_holm", "value", "low", "high", "n", "seeds")
    rows = [[t[k] for k in keys] for t in tests]
    columns = ["kind", "comparison", "p", "p (Holm)", "value", "low", "high", "n", "seeds"]  # as keys, named
    log_table(names, f"{exp.name}/report", exp.name, columns, rows, log_dir)


def write(evidence: dict, out: Path) -> None:
    """The record and its markdown view, side by side."""
    write_json(Path(out) / "report.json", evidence)
    write_text_atomic(Path(out) / "report.md", markdown.render(evidence))
