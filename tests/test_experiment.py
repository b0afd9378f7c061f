"""The experiment runner: a reduced demo end to end, skipping of finished stages, resume after a kill."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crrelu_llm.experiments.experiment import DEMO_RECIPE, load_experiment

from helpers import experiment_main, reduced_demo
from judge_server import prefers_longer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reduced_demo_runs_every_stage_and_reports(demo_run, capsys):
    _, out = demo_run
    summary = json.loads((out / "summary.json").read_text())
    ran = {s["stage"] for s in summary["stages"] if s["status"] == "ran"}
    assert {"data", "init", "original", "gelu/sft", "crrelu/sft", "relu/sft", "crrelu/patched drift"} <= ran
    assert {r["arm"] for r in summary["rows"]} == {"gelu", "crrelu", "relu"}
    for row in summary["rows"]:
        lo, hi = row["winrate_vs-sft"]["interval"]
        assert lo <= row["winrate_vs-sft"]["win_rate"] <= hi
        if row["arm"] != "gelu":
            assert "winrate_vs-gelu" in row and row["kl_step0"] > 0
    crrelu = crrelu_row = next(r for r in summary["rows"] if r["arm"] == "crrelu")
    assert crrelu["epsilon_range"] is not None
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["arms"]) == {"gelu", "crrelu", "relu"}
    assert set(report["plots"]) == {
        "training_curves.png",
        "epsilon.png",
        "reward_accuracy.png",
        "win_rates.png",
        "probe_per_layer.png",
    }
    # help or harm: every arm at step 0, after SFT and after DPO, with benchmark and probe results
    stages = {(r["arm"], r["stage"]): r for r in report["stages"]}
    assert set(stages) == {
        (arm, stage) for arm in ("gelu", "crrelu", "relu") for stage in ("step 0", "SFT", "DPO beta=0.5 seed=0")
    }
    for (arm, stage), row in stages.items():
        bench = row["benchmarks"]["crrelu_arith_mc"]
        assert bench["n"] == 40 and bench["metric"] == "acc" and 0 <= bench["value"] <= 1 and bench["stderr"] > 0
        assert len(row["probe"]["layers"]) == 2
        assert (row["probe"]["layers"][0]["epsilon"] is not None) == (arm == "crrelu")
        assert ("kl_to_original" in row) == (not (arm == "gelu" and stage == "step 0"))
    assert stages[("crrelu", "step 0")]["probe"]["layers"][0]["epsilon"] == pytest.approx(0.01)
    assert stages[("crrelu", "SFT")]["probe"]["layers"][0]["epsilon"] != pytest.approx(0.01)
    assert stages[("crrelu", "step 0")]["kl_to_original"]["value"] == crrelu_row["kl_step0"]
    rewards = report["arms"]["crrelu"]["rewards"][0]
    assert len(rewards["margins_per_evaluation_beta"]) == 3 and rewards["training_beta"] == 0.5
    lo, hi = rewards["accuracy_interval"]
    assert lo <= rewards["accuracy"] <= hi and rewards["n"] == 40
    assert len(report["arms"]["crrelu"]["win_rates"]) == 2  # vs its own SFT start and vs the GELU arm
    md = (out / "report" / "report.md").read_text()
    assert report["arms"]["crrelu"]["drift"][0]["kl_patched_original"] == crrelu_row["kl_step0"]  # not "–"
    assert "position consistency: None" not in md and "± 0.000" not in md
    assert "## Help or harm: each arm at every stage" in md and "| crrelu | SFT |" in md
    assert "one seed: the between-seed spread is not measured" in md
    # benchmark contrasts: every stage against its start and every arm against gelu, paired on the same items
    contrasts = {(c["kind"], c["arm"], c["stage"], c["against"]["stage"]): c for c in report["benchmark_contrasts"]}
    dpo = "DPO beta=0.5 seed=0"
    for arm in ("gelu", "crrelu", "relu"):
        assert ("stage", arm, "SFT", "step 0") in contrasts and ("stage", arm, dpo, "SFT") in contrasts
    for arm, stage in [(a, s) for a in ("crrelu", "relu") for s in ("step 0", "SFT", dpo)]:
        assert ("arm", arm, stage, stage) in contrasts
    assert len(contrasts) == 12
    assert {c["estimate"]["test"] for c in contrasts.values()} == {"McNemar's exact test on the discordant items"}
    one = contrasts[("arm", "crrelu", "step 0", "step 0")]["estimate"]
    a, b = (
        json.loads((folder / "benchmark-crrelu_arith_mc.json").read_text())["items"]["acc"]
        for folder in (out / "crrelu" / "patched" / "eval", out / "original" / "eval")
    )
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[sum(x and y for x, y in zip(a, b)), sum(x and not y for x, y in zip(a, b))]]
    table.append([sum(y and not x for x, y in zip(a, b)), sum(not x and not y for x, y in zip(a, b))])
    assert one["value"] == pytest.approx(sum(a) / 40 - sum(b) / 40) and one["n"] == 40
    assert one["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue if table[0][1] + table[1][0] else 1.0)
    assert "| crrelu - gelu at step 0 | crrelu_arith_mc |" in md
    assert "## Reward accuracy: crrelu" in md and "| 0 | crrelu/dpo-beta0.5-seed0 |" in md
    assert "| seed | evaluation beta | mean margin |" in md
    assert "## crrelu (DPO) vs crrelu/sft" in md and "![win_rates.png]" in md
    # the data are ordinary preference files
    first = json.loads((out / "data" / "train.jsonl").read_text().splitlines()[0])
    assert set(first) == {"prompt", "chosen", "rejected"}


@pytest.mark.slow
def test_running_again_skips_every_finished_stage(demo_run, capsys):
    tmp, out = demo_run
    assert experiment_main(reduced_demo(tmp, capability=True), str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] and all(s["status"] == "skipped" for s in summary["stages"])
    assert "DPO vs own SFT" in capsys.readouterr().out


@pytest.mark.slow
def test_an_openai_judged_experiment_finds_its_own_win_rates(demo_run, server, tmp_path):
    """Win rates judged by an OpenAI-compatible endpoint are written and found under one name
    (the CLI and the runner once named the file two different ways)."""
    tmp, out = demo_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    judge = server(prefers_longer)
    recipe = yaml.safe_load(reduced_demo(tmp, capability=True).read_text())
    recipe["evaluations"]["winrate"]["judge"] = f"openai:judge-model@{judge.url}"
    path = tmp_path / "openai.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert experiment_main(path, str(copy)) == 0
    summary = json.loads((copy / "summary.json").read_text())
    ran = {s["stage"] for s in summary["stages"] if s["status"] == "ran"}
    assert ran == {
        "gelu/winrate dpo-beta0.5-seed0 vs gelu/sft",
        "crrelu/winrate dpo-beta0.5-seed0 vs crrelu/sft",
        "crrelu/winrate dpo-beta0.5-seed0 vs gelu/dpo-beta0.5-seed0",
        "relu/winrate dpo-beta0.5-seed0 vs relu/sft",
        "relu/winrate dpo-beta0.5-seed0 vs gelu/dpo-beta0.5-seed0",
    }
    # five pairings of 40 prompts, both orders; identical (prompt, a, b) questions are asked once
    assert 0 < len(judge.requests) <= 5 * 40 * 2
    judgments = list(copy.glob("*/dpo-beta0.5-seed0/eval/judgments-pairwise_judge-model-vs-*.jsonl"))
    assert len(judgments) == 5 and all(len(f.read_text().splitlines()) == 40 for f in judgments)
    for row in summary["rows"]:
        assert 0 <= row["winrate_vs-sft"]["win_rate"] <= 1
        if row["arm"] != "gelu":
            assert "winrate_vs-gelu" in row
    result = json.loads(
        next(
            (copy / "crrelu" / "dpo-beta0.5-seed0" / "eval").glob("winrate-pairwise_judge-model-vs-*sft.json")
        ).read_text()
    )
    assert result["judge"] == "pairwise:judge-model"


@pytest.mark.slow
def test_killed_experiment_resumes_mid_stage(tmp_path):
    recipe = reduced_demo(tmp_path, dpo_steps=200, save_steps=10)  # long enough to be killed mid-way
    raw = yaml.safe_load(recipe.read_text())  # one arm and one evaluation: what resuming needs, no more
    raw["arms"], raw["baseline_arm"] = {"crrelu": raw["arms"]["crrelu"]}, "crrelu"
    raw["evaluations"] = {"rewards": {"betas": [0.5], "max_samples": 20, "max_length": 32}}
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "crrelu_llm.cli", "experiment", "--config", str(recipe), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first_dpo = out / "crrelu" / "dpo-beta0.5-seed0"
    deadline = time.time() + 400
    try:
        while not list(first_dpo.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, "the experiment ended before it could be interrupted"
            assert time.time() < deadline, "no DPO checkpoint appeared"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (first_dpo / "final_metrics.json").exists()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr and str(first_dpo) in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status["original"] == "skipped" and status["crrelu/sft"] == "skipped"
    assert status["crrelu/dpo beta=0.5 seed=0"] == "ran"
    assert json.loads((first_dpo / "trainer_state.json").read_text())["global_step"] == 200


@pytest.mark.parametrize(
    "change,message",
    [
        ({"arms": {"gelu": {"activation": None}, "crrelu": {"activaton": "crrelu"}}}, "unknown key 'activaton'"),
        ({"betaz": [0.1]}, "unknown key 'betaz'; did you mean 'betas'"),
        ({"dataset_name": "x"}, "exactly one of 'task'"),
        ({"baseline_arm": "silu"}, "baseline_arm 'silu' is not one of the arms"),
        ({"preference": {"max_completion_length": 10}}, "removed from TRL"),
    ],
)
def test_bad_experiment_recipes_fail_before_anything_runs(tmp_path, change, message):
    recipe = yaml.safe_load(DEMO_RECIPE.read_text())
    recipe.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match=message):  # ExperimentError, or RecipeError for a stage's keys
        load_experiment(path)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["paper_gpt2_hh", "paper_gpt2_shp"])
def test_shipped_paper_experiments_parse(name):
    exp = load_experiment(ROOT / "recipes" / "experiments" / f"{name}.yaml")
    assert set(exp.arms) == {"gelu", "corrected_gelu", "crrelu", "relu"} and exp.seeds == [0, 1, 2]
    assert len(exp.betas) == 4 and exp.factors["corrected_gelu"] == {"base": "gelu", "correction": "on"}
    assert exp.original == "openai-community/gpt2-large" and exp.launcher.startswith("accelerate launch")
    assert exp.evaluations["winrate"]["judge"].startswith("reward-model:")


@pytest.mark.slow
def test_training_stages_run_under_the_recipes_launcher(tmp_path):
    """`launcher:` makes every training stage a subprocess of accelerate launch."""
    recipe = yaml.safe_load(reduced_demo(tmp_path).read_text())
    recipe["launcher"] = (
        f"{sys.executable} -m accelerate.commands.launch --num_processes 1 --num_machines 1 "
        "--mixed_precision no --dynamo_backend no"
    )
    recipe["arms"], recipe["baseline_arm"] = {"crrelu": {"activation": "crrelu"}}, "crrelu"  # one launch a stage
    recipe["evaluations"] = {"rewards": {"betas": [0.5], "max_samples": 20, "max_length": 32}}
    path = tmp_path / "launched.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert experiment_main(path, str(out)) == 0
    for stage in ("original", "crrelu/sft", "crrelu/dpo-beta0.5-seed0"):
        run_dir = out / stage
        assert (run_dir / "final_metrics.json").exists(), stage
        written = yaml.safe_load(next(run_dir.glob("*_stage.yaml")).read_text())
        assert written["output_dir"] == str(run_dir)
        consistency = json.loads((run_dir / "rank_consistency.json").read_text())
        assert len(consistency["ranks"]) == 1
    assert (out / "crrelu" / "dpo-beta0.5-seed0" / "eval" / "rewards.json").exists()


@pytest.mark.slow
def test_the_readme_shows_the_demo_table_as_the_demo_prints_it(demo_run):
    """The README's demo output is pasted from a run: same header, same columns, same footer."""
    from crrelu_llm.reporting.summary import format_table

    _, out = demo_run
    printed = format_table(json.loads((out / "summary.json").read_text()), "gelu").splitlines()
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("```\ndemo: 3 preference runs (DPO)") + 4 :]
    block = block[: block.index("```")].splitlines()
    assert block[1] == printed[0]  # the header
    rows = [
        line for line in block if line.split(" ")[0] in {f"{a}/dpo-beta0.5-seed0" for a in ("gelu", "crrelu", "relu")}
    ]
    assert len(rows) == 3 and all(len(row) == len(printed[1]) for row in rows)
    assert block[5].startswith("95% intervals") and printed[-1].startswith("95% intervals")


@pytest.mark.slow
def test_a_recover_stage_distils_every_patched_arm_before_sft(tmp_path, capsys):
    """`recover:` distils CRReLU (calibrated, gradual) and the ReLU control alike; SFT starts from it."""
    recipe = yaml.safe_load(reduced_demo(tmp_path).read_text())
    recipe["evaluations"] = {"drift": {"max_samples": 20}, "probe": {"max_samples": 10}}
    recipe["recover"] = {
        "max_steps": 4,
        "learning_rate": 3e-4,
        "per_device_train_batch_size": 16,
        "max_length": 32,
        "logging_steps": 2,
        "save_steps": 4,
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "report_to": "none",
        "epsilon_init": "calibrate",
        "swap_steps": 2,
    }
    path = tmp_path / "recover.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert experiment_main(path, str(out)) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    stages = {(r["arm"], r["stage"]) for r in report["stages"]}
    assert {("crrelu", "recovered"), ("relu", "recovered")} <= stages and ("gelu", "recovered") not in stages
    for arm in ("crrelu", "relu"):
        sft = yaml.safe_load((out / arm / "sft" / "recipe.yaml").read_text())
        assert sft["model_name_or_path"] == str(out / arm / "recover")
        recovered = yaml.safe_load((out / arm / "recover" / "recipe.yaml").read_text())
        assert recovered["swap_steps"] == 2 and recovered["activation"] == arm
    assert yaml.safe_load((out / "relu" / "recover" / "recipe.yaml").read_text())["epsilon_init"] != "calibrate"
    calibrated = json.loads((out / "crrelu" / "recover" / "patch_report.json").read_text())["calibrated_epsilons"]
    assert len(calibrated) == 2
    assert yaml.safe_load((out / "gelu" / "sft" / "recipe.yaml").read_text())["model_name_or_path"].endswith("original")
    assert "help or harm: each arm at every stage" in capsys.readouterr().out
