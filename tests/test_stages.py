"""One declaration of every stage: step 0 is the model the arm trains, every number names its stage."""

import json
from pathlib import Path

import pytest
import yaml

from crrelu_llm.cli import main as cli_main
from crrelu_llm.experiments.experiment import load_experiment
from crrelu_llm.experiments.stages import declare

from helpers import small_recipe


def patched_modules(model_dir: Path) -> dict:
    record = json.loads((model_dir / "config.json").read_text())["crrelu_llm_patch"]
    return {path: entry["activation"] for path, entry in record["modules"].items()}


ARMS = {
    "gelu": {"activation": None},
    "layer0": {"activation": "crrelu", "patch_layers": [0]},
    "calibrated": {"activation": "crrelu", "epsilon_init": "calibrate"},
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    out = tmp / "out"
    assert cli_main(["experiment", "--config", str(small_recipe(tmp, ARMS)), "--out", str(out)]) == 0
    return tmp, out


@pytest.mark.slow
def test_every_model_of_an_arm_has_the_patch_the_arm_trains(experiment):
    _, out = experiment
    for arm in ("layer0", "calibrated"):
        models = [out / arm / "patched", out / arm / "sft", out / arm / "dpo-beta0.5-seed0"]
        modules = [patched_modules(m) for m in models]
        assert modules[0] == modules[1] == modules[2], arm
    assert set(patched_modules(out / "layer0" / "patched")) == {"transformer.h.0.mlp.act"}
    # DPO kept the SFT model's block-0 patch and its learned eps (it used to re-patch block 0 at 0.01)
    dpo = json.loads((out / "layer0" / "dpo-beta0.5-seed0" / "patch_report.json").read_text())
    assert dpo["already_patched"] is True


@pytest.mark.slow
def test_a_calibrated_arm_starts_every_stage_from_the_same_calibrated_eps(experiment):
    _, out = experiment
    step0 = json.loads((out / "calibrated" / "patched" / "patch_report.json").read_text())
    sft = json.loads((out / "calibrated" / "sft" / "patch_report.json").read_text())
    assert step0["calibrated_epsilons"] == sft["calibrated_epsilons"]
    assert len(step0["calibrated_epsilons"]) == 2
    assert all(value != 0.01 for value in step0["calibrated_epsilons"].values())


@pytest.mark.slow
def test_the_report_never_shows_one_stage_under_another(experiment):
    _, out = experiment
    report = json.loads((out / "report" / "report.json").read_text())
    gelu = report["arms"]["gelu"]
    assert "drift" not in gelu and "unpatched original" in gelu["drift_note"]  # not the DPO model's drift
    for arm in ("layer0", "calibrated"):
        assert report["arms"][arm]["drift"][0]["stage"] == "step 0"
        assert report["arms"][arm]["drift"][0]["from"].endswith(f"{arm}/patched/eval/drift.json")
    text = (out / "report" / "report.md").read_text()
    gelu_row = next(line for line in text.splitlines() if line.startswith("| gelu |"))
    assert "unpatched original" in gelu_row
    drift = text.split("## Drift: layer0\n")[1].split("\n## ")[0]
    assert "| step 0 |" in drift and "dpo-beta" not in drift
    assert "Data that reached each run" in text and "- gelu, seed 0 (gelu/dpo-beta0.5-seed0): data [train]" in text
    for entry in report["arms"].values():  # one reward accuracy per model, ours, with its n
        assert entry["reward_accuracy"]["n"] == [20]
        assert entry["rewards"][0]["stage"].endswith("dpo-beta0.5-seed0")


@pytest.mark.slow
def test_a_rerun_keeps_each_stage_s_wall_time_and_says_what_it_reused(experiment, capsys):
    tmp, out = experiment
    first = json.loads((out / "summary.json").read_text())
    took = {s["stage"]: s["seconds"] for s in first["stages"] if s["status"] == "ran"}
    assert cli_main(["experiment", "--config", str(tmp / "recipe.yaml"), "--out", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert {s["status"] for s in again["stages"]} == {"skipped"}
    assert {s["stage"]: s["seconds"] for s in again["stages"]} == took
    assert again["stage_totals"]["ran"] == 0 and again["stage_totals"]["reused"] == len(took)
    assert f"ran 0 stage(s) now (0 s), reused {len(took)} finished stage(s)" in capsys.readouterr().out
    env = again["environment"]
    assert env["packages"]["torch"] and env["torch_cpu_capability"] and env["torch_threads"] >= 1
    assert all(s["environment"]["packages"]["transformers"] for s in again["stages"])  # each stage's own record


def test_step0_is_declared_with_the_arm_s_full_patch_keys(tmp_path):
    exp = load_experiment(small_recipe(tmp_path, ARMS, evaluations={"probe": {}}))
    declaration = declare(exp)
    patch = {s.arm: s for s in declaration.by_kind("patch")}
    assert set(patch) == {"layer0", "calibrated"}
    assert patch["layer0"].keys["patch_layers"] == [0] and patch["layer0"].keys["command"] == "sft"
    assert patch["calibrated"].keys["epsilon_init"] == "calibrate"
    # only what the starting model depends on: an optimiser setting changes training, not step 0
    assert "epsilon_learning_rate" not in patch["layer0"].keys and "learning_rate" not in patch["layer0"].keys
    assert {"model_name_or_path", "activation", "seed", "dataset_name"} <= set(patch["layer0"].keys)
    probes = {(s.arm, s.step): s.model for s in declaration.by_kind("probe")}
    assert probes[("layer0", "step 0")] == str(exp.output_dir / "layer0" / "patched")
    assert declaration.models()["gelu"]["step 0"] == declaration.original
    assert probes[(None, "original")] == declaration.original
    # resolved keys: the runner's defaults are written into each evaluation stage
    assert all(s.keys["max_length"] == 1024 and s.keys["max_samples"] == 200 for s in declaration.by_kind("probe"))


def test_a_recipe_that_cannot_run_is_refused_by_the_run_and_the_plan_before_anything(tmp_path, capsys):
    bad = small_recipe(
        tmp_path, {"gelu": {"activation": None}, "relu": {"activation": "relu", "epsilon_init": "calibrate"}}
    )
    for extra in ([], ["--plan"]):
        out = tmp_path / f"out{len(extra)}"
        assert cli_main(["experiment", "--config", str(bad), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "calibrate" in err and "relu/" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_the_plan_says_unknown_for_what_it_cannot_estimate(tmp_path, capsys):
    recipe = yaml.safe_load(
        small_recipe(tmp_path, ARMS, evaluations={"winrate": {"judge": "rule:arithmetic"}}).read_text()
    )
    del recipe["pretrain"]
    recipe["original"] = str(tmp_path / "no-such-model")
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli_main(["experiment", "--config", str(path), "--out", str(tmp_path / "o"), "--plan"]) == 0
    text = capsys.readouterr().out
    assert "0.00e+00" not in text.splitlines()[-1] or "unknown" in text.splitlines()[-1]
    assert text.splitlines()[-1].startswith("total unknown")
    assert "calibrated/winrate dpo-beta0.5-seed0 vs gelu/dpo-beta0.5-seed0 " in text  # never cut
    assert not (tmp_path / "o").exists()


def test_probe_plot_gives_each_arm_one_colour_and_each_line_a_legend_entry():
    from crrelu_llm.reporting.figures import arm_colours, line_style, probe_figure

    def layers(eps):
        return [
            {
                "layer": i,
                "epsilon": eps,
                "least_squares_epsilon": 0.1,
                "excess_kurtosis": 1.0,
                "skewness": 0.0,
                "share_negative": 0.5,
                "output_small": 0.1,
            }
            for i in range(2)
        ]

    rows = [
        {"arm": arm, "stage": stage, "probe": {"layers": layers(0.01 if arm == "crrelu" else None)}}
        for arm in ("gelu", "crrelu", "relu")
        for stage in ("step 0", "SFT")
    ]
    colours = arm_colours(["gelu", "crrelu", "relu"])
    fig = probe_figure(rows, colours)
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels == [f"{r['arm']} {r['stage']}" for r in rows]  # crrelu included, once each
    for ax in fig.axes:
        for line in ax.get_lines():
            arm, stage = line.get_label().split(" ", 1)
            assert (
                line.get_color() == colours[arm] and line.get_linestyle() == {"-.": "-.", "--": "--"}[line_style(stage)]
            )


def test_the_epsilon_plot_starts_a_run_from_the_eps_it_started_with():
    from crrelu_llm.reporting.figures import starting_epsilons
    from crrelu_llm.reporting.runs import Run

    kept = Run(
        "crrelu",
        Path("x"),
        recipe={"epsilon_init": 0.01},
        patch_report={
            "already_patched": True,
            "epsilon": {"epsilon/00": 0.08, "epsilon/01": 0.1, "epsilon/mean": 0.09},
        },
    )
    assert starting_epsilons(kept) == {"epsilon/00": 0.08, "epsilon/01": 0.1}
    fresh = Run("crrelu", Path("x"), recipe={"epsilon_init": 0.01}, patch_report={"epsilon_init": 0.02})
    assert starting_epsilons(fresh) == {"*": 0.02}


def test_a_refused_training_command_leaves_no_output_directory(tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n')
    out = tmp_path / "run"
    assert (
        cli_main(["dpo", "--model_name_or_path", "tiny-gpt2", "--dataset_name", str(data), "--output_dir", str(out)])
        == 2
    )
    assert "cannot tell the format" in capsys.readouterr().err
    assert not out.exists()


def test_the_win_rate_plot_zooms_in_and_shows_wins_ties_and_losses():
    from crrelu_llm.reporting.figures import win_rate_figure

    stats = {"win_rate": 0.52, "interval": [0.49, 0.54], "wins": 40, "ties": 440, "losses": 20}
    fig = win_rate_figure([("crrelu (DPO) vs crrelu/sft", "crrelu", stats)], {"crrelu": "C1"})
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert 0.4 < lo < 0.49 and 0.54 < hi < 0.6  # not 0-1: a few points stay visible
    assert [t.get_text() for t in ax.texts] == ["40 W / 440 T / 20 L"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["crrelu (DPO) vs crrelu/sft"]


def test_the_win_rate_plot_shows_the_length_controlled_rate_beside_the_raw_one():
    from crrelu_llm.reporting.figures import win_rate_figure

    stats = {
        "win_rate": 0.7,
        "interval": [0.64, 0.75],
        "wins": 140,
        "ties": 0,
        "losses": 60,
        "length_controlled": {"value": 0.52, "interval": [0.45, 0.58], "n": 200},
    }
    ax = win_rate_figure([("crrelu (DPO) vs gelu", "crrelu", stats)], {"crrelu": "C1"}).axes[0]
    assert sorted(round(c.lines[0].get_xdata()[0], 2) for c in ax.containers) == [0.52, 0.7]
    assert ax.get_xlim()[0] < 0.45
    undefined = {**stats, "length_controlled": {"value": None, "interval": None, "n": 200, "undefined": "why"}}
    ax = win_rate_figure([("crrelu (DPO) vs gelu", "crrelu", undefined)], {"crrelu": "C1"}).axes[0]
    assert len(ax.containers) == 1
