"""crrelu-llm simpo|orpo|kto: TRL's CPOTrainer (SimPO loss), ORPOTrainer and KTOTrainer train a
patched model as dpo does: eps in its own group, moving; the patch survives the checkpoint; the
reference (or its absence) recorded."""

import json
import random

import pytest

from crrelu_llm.cli import main as cli_main


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rng = random.Random(0)
    rows = []
    for _ in range(48):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"{a}+{b}=", "chosen": f"{a + b}.", "rejected": f"{a + b + 1}."})
    data = tmp_path_factory.mktemp("objectives") / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


@pytest.mark.parametrize("objective", ["simpo", "orpo", "kto"])
def test_each_objective_trains_a_crrelu_model_end_to_end(objective, pairs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from crrelu_llm import epsilon_values

    out = tmp_path / objective
    argv = [
        objective,
        "--model_name_or_path",
        "tiny-gpt2",
        "--dataset_name",
        str(pairs),
        "--eval_fraction",
        "0.1",
        "--max_steps",
        "3",
        "--learning_rate",
        "1e-3",
        "--activation_learning_rate",
        "5e-2",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--max_length",
        "32",
        "--logging_steps",
        "1",
        "--save_steps",
        "3",
        "--report_to",
        "none",
        "--output_dir",
        str(out),
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{objective} done: 3 steps" in printed and "epsilon in [" in printed
    model = AutoModelForCausalLM.from_pretrained(out)  # the patch survives the checkpoint
    eps = epsilon_values(model)
    assert len(eps) == 2 and all(v != 0.01 for v in eps.values()), eps  # eps moved from its init
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "epsilon/00" in h]
    assert logged and logged[-1]["epsilon/00"] == pytest.approx(eps["transformer.h.0.mlp.act"], abs=1e-6)
    reference = json.loads((out / "reference.json").read_text())
    card = (out / "README.md").read_text()
    if objective == "kto":
        assert reference["reference"] == "policy" and not reference.get("reference_free")
        summary = json.loads((out / "data_summary.json").read_text())
        assert "desirable" in summary["unpaired"]
    else:
        assert reference["reference_free"] is True and reference["reference"] is None
        assert "needs no reference model" in card
    # the same command again: the run is finished, and nothing of it is replaced
    files = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert cli_main(argv) == 0 and "holds this run, finished; nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files
    assert epsilon_values(AutoModelForCausalLM.from_pretrained(out)) == eps


def test_simpo_refuses_another_loss_type_in_one_line(pairs, tmp_path, capsys):
    code = cli_main(
        [
            "simpo",
            "--model_name_or_path",
            "tiny-gpt2",
            "--dataset_name",
            str(pairs),
            "--loss_type",
            "sigmoid",
            "--output_dir",
            str(tmp_path / "x"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "loss_type must be simpo" in err[0]
    assert not (tmp_path / "x").exists()


def test_an_experiment_declares_objectives_as_arms(tmp_path):
    from crrelu_llm.experiments.experiment import check_stages, load_experiment
    from crrelu_llm.experiments.stages import declare

    from helpers import small_recipe

    arms = {
        "gelu": {"activation": None},
        "crrelu": {"activation": "crrelu"},
        "crrelu-simpo": {"activation": "crrelu", "objective": "simpo"},
        "crrelu-kto": {"activation": "crrelu", "objective": "kto"},
    }
    exp = load_experiment(small_recipe(tmp_path, arms, evaluations={"rewards": {"max_samples": 8}}))
    declaration = declare(exp)
    runs = {s.arm: s for s in declaration.preference_runs}
    assert {a: s.command for a, s in runs.items()} == {
        "gelu": "dpo",
        "crrelu": "dpo",
        "crrelu-simpo": "simpo",
        "crrelu-kto": "kto",
    }
    assert "objective" not in runs["crrelu-simpo"].keys and "ref_logps_cache_dir" not in runs["crrelu-simpo"].keys
    assert "ref_logps_cache_dir" in runs["crrelu"].keys
    sft = {s.arm: s for s in declaration.by_kind("sft")}
    assert sft["crrelu-simpo"].command == "sft" and "objective" not in sft["crrelu-simpo"].keys
    rewards = {s.arm: s for s in declaration.by_kind("rewards")}
    assert rewards["crrelu-simpo"].baseline is None and rewards["crrelu-kto"].baseline == sft["crrelu-kto"].model
    parsed = check_stages(exp, declaration)  # each stage's keys parse as its own command's recipe
    assert type(parsed[runs["crrelu-simpo"].name]).__name__ == "CRReLUSimPOConfig"
    # each preference stage is named after the objective it runs (DPO's names are what they were)
    assert {a: (s.name, s.step, s.model.split("/")[-1]) for a, s in runs.items() if a != "gelu"} == {
        "crrelu": ("crrelu/dpo beta=0.5 seed=0", "DPO beta=0.5 seed=0", "dpo-beta0.5-seed0"),
        "crrelu-simpo": ("crrelu-simpo/simpo beta=0.5 seed=0", "SimPO beta=0.5 seed=0", "simpo-beta0.5-seed0"),
        "crrelu-kto": ("crrelu-kto/kto beta=0.5 seed=0", "KTO beta=0.5 seed=0", "kto-beta0.5-seed0"),
    }
    assert {s.kind for s in runs.values()} == {"preference"}
    # the shared preference keys may name the objective too
    arms = {"gelu": {"activation": None}}
    shared = load_experiment(small_recipe(tmp_path, arms, preference={"objective": "orpo"}))
    assert shared.objectives == {"gelu": "orpo"} and "objective" not in shared.preference


def test_the_shared_preference_keys_read_under_their_old_name_dpo(tmp_path, capsys):
    import yaml

    from crrelu_llm.experiments.experiment import load_experiment

    from helpers import small_recipe

    path = small_recipe(tmp_path, {"gelu": {"activation": None}})
    new = load_experiment(path)
    recipe = yaml.safe_load(path.read_text())
    recipe["dpo"] = recipe.pop("preference")
    path.write_text(yaml.safe_dump(recipe))
    assert load_experiment(path).preference == new.preference
    recipe["preference"] = {"beta": 0.1}
    path.write_text(yaml.safe_dump(recipe))
    assert cli_main(["experiment", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'dpo' is the old name of 'preference': keep one of them" in err[0]
    assert not (tmp_path / "out").exists()


def test_an_unknown_objective_is_refused_in_one_line(tmp_path, capsys):
    from helpers import small_recipe

    bad = small_recipe(
        tmp_path, {"gelu": {"activation": None}, "crrelu": {"activation": "crrelu", "objective": "simp0"}}
    )
    assert cli_main(["experiment", "--config", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "objective must be one of dpo, simpo, orpo, kto, got 'simp0'" in err[0]
    assert "did you mean 'simpo'" in err[0] and not (tmp_path / "out").exists()


def test_eval_rewards_scores_a_reference_free_run_by_its_own_implicit_reward(pairs, tmp_path, capsys):
    out = tmp_path / "orpo"
    assert (
        cli_main(
            [
                "orpo",
                "--model_name_or_path",
                "tiny-gpt2",
                "--dataset_name",
                str(pairs),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "4",
                "--max_length",
                "32",
                "--report_to",
                "none",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        cli_main(["eval", "rewards", "--model", str(out), "--data", str(pairs), "--max-samples", "12", "--beta", "1"])
        == 0
    )
    assert "ORPO implicit-reward accuracy" in capsys.readouterr().out
    result = json.loads((out / "eval" / "rewards.json").read_text())
    assert result["objective"] == "orpo" and "log odds" in result["implicit_reward"] and result["reference"] is None
    assert result["n"] > 0 and 0 <= result["accuracy"] <= 1 and result["ties"] < 1  # the held-out pairs
    # by hand for one pair: the margin at beta 1 is the log odds ratio of the mean token probabilities
    assert result["margins_per_evaluation_beta"][0]["beta"] == 1.0
    # a run with a reference needs --reference
    sft = tmp_path / "sft-like"
    sft.mkdir()
    (sft / "reference.json").write_text(json.dumps({"reference": "policy"}))
    assert cli_main(["eval", "rewards", "--model", str(sft), "--data", str(pairs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --reference" in err[0]


@pytest.mark.slow
def test_an_experiment_compares_objectives_as_arms_end_to_end(tmp_path):
    from helpers import experiment_main, small_recipe

    arms = {"gelu": {"activation": None}, "crrelu-simpo": {"activation": "crrelu", "objective": "simpo"}}
    evaluations = {
        "rewards": {"max_samples": 20, "max_length": 32},
        "winrate": {"judge": "rule:arithmetic", "num_prompts": 20, "max_new_tokens": 4},
    }
    out = tmp_path / "out"
    assert experiment_main(small_recipe(tmp_path, arms, evaluations), str(out)) == 0
    run = out / "crrelu-simpo" / "simpo-beta0.5-seed0"
    assert json.loads((run / "reference.json").read_text())["reference_free"] is True
    assert (run / "simpo_stage.yaml").exists() and not (run / "dpo_stage.yaml").exists()
    rewards = json.loads((run / "eval" / "rewards.json").read_text())
    assert rewards["objective"] == "simpo" and rewards["reference"] is None
    report = json.loads((out / "report" / "report.json").read_text())
    assert {a: e["objective"] for a, e in report["arms"].items()} == {"gelu": "dpo", "crrelu-simpo": "simpo"}
    text = (out / "report" / "report.md").read_text()
    assert "## crrelu-simpo (SIMPO) vs gelu/dpo-beta0.5-seed0" in text
    assert "| 0 | crrelu-simpo/simpo-beta0.5-seed0 |" in text
    assert "SIMPO run, no reference model: its reward is SimPO's" in text and "length-controlled" in text


def test_objective_specific_mistakes_are_one_line_errors(pairs, tmp_path, capsys):
    common = ["--model_name_or_path", "tiny-gpt2", "--dataset_name", str(pairs), "--output_dir", str(tmp_path / "x")]
    assert cli_main(["orpo", *common, "--reference", "original"]) == 2
    assert "'original': orpo has no reference model" in capsys.readouterr().err
    assert cli_main(["kto", *common, "--per_device_train_batch_size", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "KTO estimates its KL term from the other examples of a batch" in err[0]
    assert not (tmp_path / "x").exists()


def test_a_run_kept_under_its_old_dpo_name_is_named_with_the_move_that_keeps_it(tmp_path, capsys):
    from helpers import small_recipe

    arms = {"gelu": {"activation": None}, "crrelu-simpo": {"activation": "crrelu", "objective": "simpo"}}
    out = tmp_path / "out"
    old = out / "crrelu-simpo" / "dpo-beta0.5-seed0"
    old.mkdir(parents=True)
    (old / "final_metrics.json").write_text("{}")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert cli_main(["experiment", "--config", str(small_recipe(tmp_path, arms)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preference runs are now named after their objective: mv" in err[0]
    assert f"mv {old} {out / 'crrelu-simpo' / 'simpo-beta0.5-seed0'}," in err[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written
