"""One evidence record, many views: every estimate computed once into report.json, the views
drawn from it; benchmark contrasts paired; the reading's family adjusted (Holm)."""

import ast
import json
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "crrelu_llm"


@pytest.mark.slow
def test_an_estimate_changed_in_report_json_is_what_every_view_prints(demo_run):
    from crrelu_llm.reporting import markdown
    from crrelu_llm.reporting.summary import format_table, opening, readings, summary_view

    _, out = demo_run
    record = json.loads((out / "report" / "report.json").read_text())
    group = next(g for k, g in record["arms"]["crrelu"]["win_rates"].items() if k.endswith("_sft"))
    group["per_seed"][0]["estimate"].update(value=0.987654, interval=[0.911111, 0.999999])
    view = summary_view(record)
    assert "0.99 [0.91, 1.00]" in format_table(view, "gelu")
    assert any("0.99 [0.91, 1.00]" in line for line in readings(view, "gelu"))
    assert "0.988 [0.911, 1.000]" in markdown.render(record)
    assert opening(view, "gelu")[0].startswith("positive control: DPO beats its own SFT start in")
    # and what was written is what the views of the unchanged record print
    written = json.loads((out / "summary.json").read_text())
    fresh = summary_view(json.loads((out / "report" / "report.json").read_text()))
    assert written["rows"] == json.loads(json.dumps(fresh["rows"]))
    assert (out / "report" / "report.md").read_text().startswith("# crrelu-llm comparison\n\n## Reading\n")


@pytest.mark.slow
def test_the_record_holds_holm_adjusted_and_unadjusted_p_values_for_the_reading_family(demo_run):
    from statsmodels.stats.multitest import multipletests

    _, out = demo_run
    record = json.loads((out / "report" / "report.json").read_text())
    family = record["multiplicity"]["tests"]
    kinds = {t["kind"] for t in family}
    assert kinds == {"win rate", "reward accuracy", "benchmark"}
    assert len(family) == 3 + 2 + 2 + 12  # win rates (3 arms vs own SFT, 2 vs gelu), 2 accuracies, 12 contrasts
    expected = multipletests([t["p"] for t in family], method="holm")[1]
    assert [t["p_holm"] for t in family] == pytest.approx(list(expected))
    assert all(t["p_holm"] >= t["p"] for t in family)
    reading = json.loads((out / "summary.json").read_text())["reading"]
    assert reading[-1].startswith(f"multiplicity: Holm over the {len(family)} tests")


def test_paired_benchmark_contrasts_use_mcnemar_on_the_same_items_and_fall_back_to_independent():
    from statsmodels.stats.contingency_tables import mcnemar

    from crrelu_llm.reporting.report_stages import benchmark_contrasts

    a = [1.0] * 30 + [0.0] * 10 + [1.0] * 5 + [0.0] * 55
    b = [1.0] * 30 + [1.0] * 10 + [0.0] * 5 + [0.0] * 55
    ids = list(range(100))

    def row(arm, stage, outcomes, keep=True):
        value = sum(outcomes) / len(outcomes)
        stderr = (value * (1 - value) / (len(outcomes) - 1)) ** 0.5
        items = {"doc_id": ids, "acc": outcomes} if keep else None
        bench = {"metric": "acc", "value": value, "stderr": stderr, "n": 100, "items": items}
        return {"arm": arm, "stage": stage, "benchmarks": {"t": bench}}

    rows = [row("gelu", "SFT", b), row("crrelu", "SFT", a)]
    (contrast,) = benchmark_contrasts(rows, "gelu")
    e = contrast["estimate"]
    assert contrast["kind"] == "arm" and e["value"] == pytest.approx(-0.05)
    assert e["p_value"] == pytest.approx(mcnemar([[30, 5], [10, 55]], exact=True).pvalue)
    assert e["test"] == "McNemar's exact test on the discordant items"
    independent = benchmark_contrasts([row("gelu", "SFT", b, keep=False), row("crrelu", "SFT", a)], "gelu")
    assert independent[0]["estimate"]["test"] == "z test, independent samples"
    # the paired interval is narrower than the independent one on the same outcomes
    width = lambda c: c["estimate"]["interval"][1] - c["estimate"]["interval"][0]  # noqa: E731
    assert width(contrast) < width(independent[0])
    # within an arm: only against the stage it started from
    steps = benchmark_contrasts(
        [row("gelu", "SFT", b), row("gelu", "DPO s0", a), row("gelu", "DPO s1", a)],
        "gelu",
        {("gelu", "DPO s0"): "SFT", ("gelu", "DPO s1"): "SFT"},
    )
    assert [(c["stage"], c["against"]["stage"]) for c in steps] == [("DPO s0", "SFT"), ("DPO s1", "SFT")]


# ------------------------------------------------------------------ structure


def _source(relative: str) -> str:
    return (PACKAGE / relative).read_text()


def test_reporting_receives_plain_data_and_never_walks_the_experiment_declaration():
    """What needs the stage declaration lives in experiments/ (evidence.py); reporting/ gets data."""
    for path in sorted((PACKAGE / "reporting").glob("*.py")):
        tree = ast.parse(path.read_text())
        walked = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "declaration"
        }
        assert not walked, f"reporting/{path.name} walks the declaration: {sorted(walked)}"


def test_the_views_compute_no_estimate():
    """summary (console, summary.json), markdown and figures read the record's estimates."""
    estimators = {"win_rate_estimate", "accuracy_estimate", "paired_difference", "pooled", "wilson_interval"}
    for name in ("summary.py", "markdown.py", "figures.py"):
        tree = ast.parse(_source(f"reporting/{name}"))
        called = {
            n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
        }
        assert not called & estimators, f"reporting/{name} computes {sorted(called & estimators)}"


def test_one_module_spells_the_result_files_and_the_eval_directory():
    """evaluation/results.py owns each result kind's file name and the eval/ rule: nothing else
    spells them (the report, the experiment and `compare` read through it)."""
    import re

    names = re.compile(
        r"""["'](rewards|drift|probe)\.json["']|["'](winrate|benchmark|generations|judgments)[-*]|/ ["']eval["']"""
    )
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() == "evaluation/results.py":
            continue
        found = names.search(path.read_text())
        assert not found, f"{path.relative_to(PACKAGE)} spells a result file: {found.group(0)}"


def test_the_documented_run_path_names_every_module_the_run_crosses():
    """docs/architecture.md's path of a run names each package module training/train.py calls into
    (the top-level helpers aside), and the trainer's own."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    block = doc[doc.index("## The path of a run") : doc.index("## The path of the evidence")]
    crossed = {"training/trainers/dpo.py", "training/mixins.py", "training/arms.py", "cli/__init__.py"}
    for node in ast.walk(ast.parse(_source("training/train.py"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crrelu_llm."):
            parts = node.module.split(".")[1:]
            if len(parts) == 1 and (PACKAGE / parts[0]).is_dir():  # `from crrelu_llm.training import models`
                parts += [node.names[0].name]
            if len(parts) > 1:
                module = "/".join(parts)
                crossed.add(module + "/" if (PACKAGE / module).is_dir() else module + ".py")
    missing = sorted(m for m in crossed if m not in block)
    assert not missing, f"the run crosses {missing}, which docs/architecture.md's path does not name"


@pytest.mark.slow
def test_each_evaluation_stage_sends_its_estimates_to_the_trackers_in_a_run_of_its_own(tmp_path, monkeypatch):
    """TensorBoard's event files read back, and W&B offline with its run files read: every
    evaluation stage in a run of its own, named and grouped, holding its estimates."""
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from helpers import experiment_main, small_recipe, wandb_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-training"))
    path = small_recipe(tmp_path, {"gelu": {"activation": None}, "crrelu": {}})
    recipe = yaml.safe_load(path.read_text())
    for stage in ("sft", "preference"):
        recipe[stage]["report_to"] = ["tensorboard", "wandb"]
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert experiment_main(path, str(out)) == 0
    name = recipe["name"]
    stages = {s["stage"] for s in json.loads((out / "summary.json").read_text())["stages"]}
    evaluated = sorted(s for s in stages if s.split(" ")[-1] in ("drift", "rewards") or " rewards" in s)
    assert evaluated
    # TensorBoard: one run (folder) per evaluation stage, holding value, interval ends and n
    folders = {p.parent for p in (out / "tracking" / "tensorboard").rglob("events.out.tfevents.*")}
    runs = {f.relative_to(out / "tracking" / "tensorboard").as_posix(): f for f in folders}
    for stage in evaluated:
        folder = runs[f"{name}/{stage}"]
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        tags = set(accumulator.Tags()["scalars"])
        kind = "kl_to_original" if stage.endswith("drift") else "reward_accuracy"
        assert {f"{kind}/value", f"{kind}/low", f"{kind}/high", f"{kind}/n"} <= tags, (stage, tags)
    drift = json.loads((out / "crrelu" / "sft" / "eval" / "drift.json").read_text())
    accumulator = EventAccumulator(str(runs[f"{name}/crrelu/sft drift"]))
    accumulator.Reload()
    assert accumulator.Scalars("kl_to_original/value")[0].value == pytest.approx(drift["kl_patched_original"])
    assert f"{name}/report" in runs  # the pooled table
    # training stages: their own TensorBoard runs under their output directories
    assert list((out / "crrelu" / "sft").rglob("events.out.tfevents.*"))
    # W&B, offline: every stage its own run, named and grouped by the experiment
    runs = {}
    for file in (out / "tracking" / "wandb").rglob("run-*.wandb"):
        records = list(wandb_records(file))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        history = {
            i.key or "/".join(i.nested_key)
            for r in records
            if r.WhichOneof("record_type") == "history"
            for i in r.history.item
        }
        assert run.run_group == name
        assert run.display_name not in runs, f"two W&B runs named {run.display_name}"
        runs[run.display_name] = history
    for stage in evaluated:
        kind = "kl_to_original" if stage.endswith("drift") else "reward_accuracy"
        assert {f"{kind}/value", f"{kind}/low", f"{kind}/high", f"{kind}/n"} <= runs[f"{name}/{stage}"]
    trained = {}
    for file in (tmp_path / "wandb-training").rglob("run-*.wandb"):
        (run,) = [r.run for r in wandb_records(file) if r.WhichOneof("record_type") == "run"]
        trained[run.display_name] = run.run_group
    assert {f"{name}/crrelu/SFT", f"{name}/gelu/SFT"} <= set(trained) and set(trained.values()) == {name}
