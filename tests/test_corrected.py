"""The correction apart from the swap: corrected_<base>, and the 2x2 design the report reads."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from crrelu_llm import patch_model
from crrelu_llm.cli import main as cli_main
from crrelu_llm.errors import ExperimentError
from crrelu_llm.ops.candidates import CorrectedActivation
from crrelu_llm.patching.patch import activation_parameters
from crrelu_llm.patching.tiny import tiny_causal_lm

from helpers import experiment_main, small_recipe


def test_the_correction_on_the_model_s_own_base_at_eps_0_is_the_original_bit_for_bit(tmp_path):
    original, patched = tiny_causal_lm("gpt2"), tiny_causal_lm("gpt2")
    report = patch_model(patched, "corrected_gelu_new", epsilon_init=0.0)
    assert report.count == 2 and {r.new_type for r in report.replaced} == {"CorrectedActivation"}
    ids = torch.randint(0, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(original(ids).logits, patched(ids).logits)
    patched.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert type(loaded.transformer.h[1].mlp.act).__name__ == "CorrectedActivation"
    assert torch.equal(loaded(ids).logits, original(ids).logits)


def test_its_eps_trains_in_the_activation_group_and_the_gate_of_a_gated_mlp_is_corrected(tmp_path):
    rows = [{"prompt": f"{a}+{a}=", "chosen": f"{2 * a}.", "rejected": f"{2 * a + 1}."} for a in range(10)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    run = tmp_path / "run"
    assert (
        cli_main(
            [
                "dpo",
                "--model_name_or_path",
                "tiny-gpt2",
                "--dataset_name",
                str(data),
                "--activation",
                "corrected_gelu_new",
                "--epsilon_init",
                "0",
                "--max_steps",
                "3",
                "--learning_rate",
                "1e-3",
                "--activation_learning_rate",
                "5e-2",
                "--per_device_train_batch_size",
                "4",
                "--report_to",
                "none",
                "--output_dir",
                str(run),
            ]
        )
        == 0
    )
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["final_epsilon/00"] != 0.0 and final["final_epsilon/01"] != 0.0  # eps moved from 0
    llama = tiny_causal_lm("llama")
    patch_model(llama, "corrected_silu", epsilon_init=0.0)
    assert type(llama.model.layers[0].mlp.act_fn).__name__ == "CorrectedActivation"
    assert set(activation_parameters(llama)) == {f"model.layers.{i}.mlp.act_fn.epsilon" for i in range(2)}


def test_calibration_is_zero_on_the_original_base_and_the_closed_form_elsewhere():
    x = torch.randn(4096, dtype=torch.float64) - 0.5
    gelu = torch.nn.functional.gelu(x)
    same = CorrectedActivation("gelu")
    same.least_squares_init(x, gelu)
    assert abs(same.epsilon_init) < 1e-12
    on_relu = CorrectedActivation("relu")
    on_relu.least_squares_init(x, gelu)
    g = x * torch.exp(-x * x / 2)
    assert on_relu.epsilon_init == pytest.approx(float((g * (gelu - torch.relu(x))).sum() / (g * g).sum()))


@pytest.mark.slow  # a subprocess without crrelu-llm: 7 s
def test_the_export_carries_it(tmp_path):
    import subprocess
    import sys

    model = tiny_causal_lm("gpt2")
    patch_model(model, "corrected_gelu_new", epsilon_init=0.0)
    with torch.no_grad():
        model.transformer.h[1].mlp.act.epsilon.fill_(0.25)
    model.save_pretrained(tmp_path / "ckpt")
    from crrelu_llm.patching.tiny import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    assert cli_main(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "shared")]) == 0
    script = (
        "import sys; sys.modules['crrelu_llm'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'shared')!r}, trust_remote_code=True)\n"
        "a = m.transformer.h[1].mlp.act\nprint(type(a).__name__, type(a.base).__name__, float(a.epsilon))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["CorrectedActivation", "NewGELUActivation", "0.25"]


ARMS = {
    "gelu": {"activation": None, "factors": {"base": "gelu", "correction": "off"}},
    "corrected": {
        "activation": "corrected_gelu_new",
        "epsilon_init": 0.0,
        "factors": {"base": "gelu", "correction": "on"},
    },
    "crrelu": {"activation": "crrelu", "factors": {"base": "relu", "correction": "on"}},
    "relu": {"activation": "relu", "factors": {"base": "relu", "correction": "off"}},
}


def test_factors_that_do_not_make_a_2x2_are_refused(tmp_path):
    from crrelu_llm.experiments.experiment import load_experiment

    arms = {**ARMS, "relu": {"activation": "relu", "factors": {"base": "relu", "correction": "on"}}}
    path = small_recipe(tmp_path, arms)
    raw = yaml.safe_load(path.read_text())
    raw["baseline_arm"] = "gelu"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ExperimentError, match="do not make a 2x2 design"):
        load_experiment(path)


def test_the_contrasts_of_a_2x2():
    from crrelu_llm.reporting.factorial import _contrasts

    y = {(0, 0): [0.0, 1.0, 0.0], (1, 0): [1.0, 1.0, 0.0], (0, 1): [0.0, 0.0, 0.0], (1, 1): [1.0, 0.0, 1.0]}
    c = _contrasts(y)  # a: the first factor (rows 1, 0 -> 1), b: the second; ab = (11 - 10) - (01 - 00)
    assert c["a"] == [1.0, 0.0, 0.5] and c["b"] == [0.0, -1.0, 0.5] and c["ab"] == [0.0, 0.0, 1.0]


def test_the_benchmark_contrasts_find_each_arm_s_run_by_its_own_step_whatever_its_objective():
    """The help-or-harm rows name a preference run by its step ("DPO beta=0.5 seed=0", "SimPO
    beta=0.5 seed=0"): a 2x2 whose arms train SimPO reads their benchmarks too."""
    from crrelu_llm.experiments.declaration import preference_step
    from crrelu_llm.reporting.factorial import _benchmarks

    cells = {"gelu": (0, 0), "relu": (1, 0), "corrected": (0, 1), "relu_corrected": (1, 1)}
    values = {"gelu": 0.5, "relu": 0.6, "corrected": 0.55, "relu_corrected": 0.7}
    for objective, label in (("dpo", "DPO"), ("simpo", "SimPO")):
        steps = [{arm: preference_step(objective, 0.5, 0) for arm in cells}]
        rows = [
            {
                "arm": arm,
                "stage": preference_step(objective, 0.5, 0),
                "benchmarks": {"crrelu_arith_mc": {"value": v, "stderr": 0.02}},
            }
            for arm, v in values.items()
        ]
        (found,) = _benchmarks(rows, cells, [0], steps, label, "")
        assert found["measure"] == f"crrelu_arith_mc after {label}, seed 0"
        assert found["a"]["value"] == pytest.approx((0.6 + 0.7 - 0.5 - 0.55) / 2)
        assert found["ab"]["value"] == pytest.approx((0.7 - 0.6) - (0.55 - 0.5))


@pytest.mark.slow
def test_a_2x2_experiment_runs_every_stage_and_reports_both_main_effects_and_the_interaction(tmp_path):
    path = small_recipe(
        tmp_path,
        ARMS,
        evaluations={
            "rewards": {"betas": [0.5], "max_samples": 20, "max_length": 32},
            "winrate": {"judge": "rule:arithmetic", "num_prompts": 20, "max_new_tokens": 4},
            "drift": {"max_samples": 10},
            "probe": {"max_samples": 10},
        },
    )
    raw = yaml.safe_load(path.read_text())
    raw["baseline_arm"] = "gelu"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert experiment_main(path, str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] and all(s["status"] == "ran" for s in summary["stages"])
    measures = {m["measure"]: m for m in summary["factorial"]["measures"]}
    assert {"reward accuracy", "win rate vs gelu", "KL to the original at step 0"} <= set(measures)
    for m in (measures["reward accuracy"], measures["win rate vs gelu"]):
        for effect in ("a", "b", "ab"):
            lo, hi = m[effect]["interval"]
            assert lo <= m[effect]["value"] <= hi
    # the corrected arm at eps 0 is the original at step 0: its KL is 0 on every example
    drift = json.loads((out / "corrected" / "patched" / "eval" / "drift.json").read_text())
    assert drift["kl_patched_original"] == 0.0 and set(drift["per_example_kl"]) == {0.0}
    text = (out / "report" / "report.md").read_text()
    assert "## The 2x2 design: base x correction" in text
    assert "| main effect of base (relu - gelu) | main effect of correction (on - off) | interaction" in text


def test_its_eps_is_held_as_deepspeed_needs_and_saved_0_dim(monkeypatch):
    """ZeRO-3 builds it with a (1,) eps (DeepSpeed cannot partition a 0-dim one); ZeRO-2 converts it;
    state_dict() and checkpoints hold a 0-dim eps either way, and either shape loads."""
    from crrelu_llm.ops import candidates
    from crrelu_llm.ops.distributed import hold_scalars_as_vectors

    monkeypatch.setattr(candidates, "deepspeed_zero3_enabled", lambda: True)
    built = CorrectedActivation("gelu_new", epsilon_init=0.5)
    assert built.epsilon.shape == (1,) and built.state_dict()["epsilon"].shape == ()
    monkeypatch.setattr(candidates, "deepspeed_zero3_enabled", lambda: False)
    model = tiny_causal_lm("gpt2")
    patch_model(model, "corrected_gelu_new", epsilon_init=0.25)
    assert hold_scalars_as_vectors(model) == 2
    act = model.transformer.h[0].mlp.act
    assert act.epsilon.shape == (1,) and model.state_dict()["transformer.h.0.mlp.act.epsilon"].shape == ()
    act.load_state_dict({"epsilon": torch.tensor(0.75)}, strict=False)
    assert act.epsilon.shape == (1,) and act.epsilon.item() == 0.75
