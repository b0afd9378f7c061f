"""An experiment on the arms' own samples: a pairs stage per arm, and iterative DPO over rounds."""

import json

import pytest
import yaml

from crrelu_llm.errors import ExperimentError
from crrelu_llm.experiments.experiment import load_experiment
from crrelu_llm.experiments.stages import declare

from helpers import experiment_main, small_recipe
from judge_server import prefers_longer

ARMS = {"gelu": {"activation": None}, "crrelu": {"activation": "crrelu"}}


def _recipe(tmp_path, judge: str, rounds: int = 2, **on_policy):
    path = small_recipe(
        tmp_path,
        ARMS,
        evaluations={
            "rewards": {"betas": [0.5], "max_samples": 10, "max_length": 32},
            "winrate": {"judge": "rule:arithmetic", "num_prompts": 10, "max_new_tokens": 4},
        },
    )
    raw = yaml.safe_load(path.read_text())
    raw["baseline_arm"] = "gelu"
    raw["on_policy"] = {
        "judge": judge,
        "num_samples": 3,
        "max_new_tokens": 4,
        "batch_size": 16,
        "num_prompts": 24,
        "rounds": rounds,
        **on_policy,
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def test_on_policy_rounds_are_declared_as_a_chain(tmp_path):
    exp = load_experiment(_recipe(tmp_path, "rule:arithmetic", rounds=2), str(tmp_path / "out"))
    d = declare(exp)
    names = [s.name for s in d.stages]
    assert {
        "gelu/pairs",
        "gelu/pairs beta=0.5 seed=0 round 2",
        "gelu/dpo beta=0.5 seed=0 round 1",
        "gelu/dpo beta=0.5 seed=0",
    } <= set(names)
    by_name = {s.name: s for s in d.stages}
    first, last = by_name["crrelu/dpo beta=0.5 seed=0 round 1"], by_name["crrelu/dpo beta=0.5 seed=0"]
    assert first.keys["dataset_name"] == str(tmp_path / "out" / "crrelu" / "pairs")
    assert by_name["crrelu/pairs"].keys["model"] == str(tmp_path / "out" / "crrelu" / "sft")  # its own SFT model
    assert by_name["crrelu/pairs beta=0.5 seed=0 round 2"].keys["model"] == first.model  # round 1's model
    assert last.keys["model_name_or_path"] == first.model and last.after[1] == "crrelu/pairs beta=0.5 seed=0 round 2"
    assert [r.name for r in d.preference_runs] == ["crrelu/dpo beta=0.5 seed=0", "gelu/dpo beta=0.5 seed=0"] or {
        r.name for r in d.preference_runs
    } == {"crrelu/dpo beta=0.5 seed=0", "gelu/dpo beta=0.5 seed=0"}
    assert d.start_of(last) == str(tmp_path / "out" / "crrelu" / "sft")  # the positive control's baseline
    from crrelu_llm.experiments.plan import format_plan, plan

    text = format_plan(plan(exp))
    assert "24 prompts x 3 samples x 4 new tokens" in text


def test_on_policy_pairs_take_a_served_model_per_stage_from_the_recipe_key(tmp_path):
    """`on_policy: {generate_with: "openai:{model}@URL"}`: each pairs stage samples from the server under
    its own model's directory name (the sampling itself: tests/test_prompt_sets.py); a bad spec is refused."""
    url = "http://127.0.0.1:8000/v1"
    exp = load_experiment(
        _recipe(tmp_path, "rule:arithmetic", generate_with=f"openai:{{model}}@{url}"), str(tmp_path / "o")
    )
    by_name = {s.name: s for s in declare(exp).stages}
    first, second = by_name["crrelu/pairs"], by_name["crrelu/pairs beta=0.5 seed=0 round 2"]
    assert first.keys["served"] == f"openai:{first.keys['model']}@{url}"
    assert second.keys["served"] == f"openai:{by_name['crrelu/dpo beta=0.5 seed=0 round 1'].model}@{url}"
    plain = load_experiment(_recipe(tmp_path, "rule:arithmetic"), str(tmp_path / "p"))
    assert "served" not in {s.name: s for s in declare(plain).stages}["crrelu/pairs"].keys  # unset: keys as before
    with pytest.raises(ExperimentError, match="on_policy: --generate-with 'vllm': write openai:<model>@<base url>"):
        load_experiment(_recipe(tmp_path, "rule:arithmetic", generate_with="vllm"), str(tmp_path / "b"))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"rounds": 0}, "on_policy.rounds must be a whole number of at least 1"),
        ({"num_samples": 1}, "at least 2 samples"),
        ({"temprature": 1.0}, "unknown key 'temprature'"),
    ],
)
def test_bad_on_policy_keys_are_refused_in_one_line(tmp_path, change, message, capsys):
    path = _recipe(tmp_path, "rule:arithmetic", **change)
    assert experiment_main(path, str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_rounds_on_policy_run_resume_after_an_interrupt_and_refuse_an_edit(tmp_path, server, monkeypatch, capsys):
    judge = server(prefers_longer)  # a tiny model gets no sum right; lengths differ, so pairs form
    path = _recipe(tmp_path, f"openai:judge@{judge.url}")
    out = tmp_path / "out"
    import crrelu_llm.evaluation.onpolicy as onpolicy

    real = onpolicy.run_pairs
    calls = []

    def interrupted(model, *args, **kwargs):  # round 2 of crrelu is interrupted, as Ctrl-C would
        calls.append(model)
        if "crrelu/dpo-beta0.5-seed0-round1" in str(model) and len(calls) < 10:
            raise KeyboardInterrupt
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onpolicy, "run_pairs", interrupted)
    assert experiment_main(path, str(out)) == 130
    assert (out / "crrelu" / "pairs" / "_pairs.json").exists()
    assert not (out / "crrelu" / "pairs-beta0.5-seed0-round2" / "_pairs.json").exists()
    calls.extend([None] * 10)  # the rerun is not interrupted
    assert experiment_main(path, str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status["crrelu/pairs"] == "skipped" and status["crrelu/pairs beta=0.5 seed=0 round 2"] == "ran"
    assert status["crrelu/dpo beta=0.5 seed=0"] == "ran" and status["gelu/dpo beta=0.5 seed=0"] == "ran"
    for arm in ARMS:
        for pairs in ("pairs", "pairs-beta0.5-seed0-round2"):
            record = json.loads((out / arm / pairs / "_pairs.json").read_text())
            assert record["counts"]["pairs"] > 0
        train = (out / arm / "dpo-beta0.5-seed0" / "recipe.yaml").read_text()
        assert f"{out / arm / 'pairs-beta0.5-seed0-round2'}" in train  # round 2 trained on round 2's pairs
    report = (out / "report" / "report.md").read_text()
    assert "## On-policy pairs" in report and "| crrelu | crrelu/pairs beta=0.5 seed=0 round 2 |" in report
    assert summary["reading"][0].startswith("positive control, DPO vs its own SFT start, per arm:")
    capsys.readouterr()
    # an edited on_policy key: the finished stages that read it are refused, nothing is run
    raw = yaml.safe_load(path.read_text())
    raw["on_policy"]["temperature"] = 0.7
    path.write_text(yaml.safe_dump(raw))
    assert experiment_main(path, str(out)) == 2
    assert "crrelu/pairs" in capsys.readouterr().err
