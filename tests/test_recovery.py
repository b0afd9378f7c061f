"""Recovering what the swap breaks: calibrated eps, distillation from the original, the gradual swap."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, TrainerCallback

import crrelu_llm
from crrelu_llm.cli import main as cli_main
from crrelu_llm.data.preference import DataArguments, load_preference_splits
from crrelu_llm.evaluation import evaluate
from crrelu_llm.evaluation.tasks import write_task_files
from crrelu_llm.ops.activation import CRReLU
from crrelu_llm.patching.calibration import calibration_pairs
from crrelu_llm.patching.loading import load_causal_lm
from crrelu_llm.patching.probe import calibrated_epsilons
from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer
from crrelu_llm.training.recipes import parse_recipe
from crrelu_llm.training.recovery import BLENDS
from crrelu_llm.training.train import run

from helpers import Crash, CrashAfterStep3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A GELU original with some training behind it (so that its pre-activations are not
    symmetric noise) and arithmetic data."""
    root = tmp_path_factory.mktemp("recovery")
    write_task_files("arithmetic", root / "data", 400, 60)
    init = root / "init"
    tiny_causal_lm("gpt2", n_positions=64, n_embd=32, n_inner=128).save_pretrained(init)
    tiny_tokenizer().save_pretrained(init)
    path = _recipe(root, "original", model_name_or_path=str(init), activation=None, max_steps=40, learning_rate=3e-3)
    run("sft", *parse_recipe("sft", ["--config", str(path)]))
    return root


def _recipe(root, name, **overrides):
    config = {
        "dataset_name": str(root / "data"),
        "output_dir": str(root / name),
        "max_steps": 8,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 16,
        "learning_rate": 2e-3,
        "epsilon_learning_rate": 1e-2,
        "logging_steps": 2,
        "save_steps": 2,
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "max_length": 32,
        "report_to": [],
        "seed": 0,
        "dataloader_num_workers": 0,
        "max_eval_samples": 20,
        **overrides,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_calibrated_eps_is_the_least_squares_value_and_is_reported(setup, capsys):
    original, data = str(setup / "original"), str(setup / "data")
    assert (
        cli_main(
            [
                "patch",
                original,
                "--out",
                str(setup / "calibrated"),
                "--epsilon-init",
                "calibrate",
                "--calibration-data",
                data,
                "--calibration-samples",
                "32",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Calibrated eps (least squares against the replaced activation):" in printed
    report = json.loads((setup / "calibrated" / "patch_report.json").read_text())
    train, _, _ = load_preference_splits(DataArguments(dataset_name=data))
    expected = calibrated_epsilons(load_causal_lm(original), tiny_tokenizer(), calibration_pairs(train, 32))
    assert report["calibrated_epsilons"] == pytest.approx(expected)
    loaded = load_causal_lm(str(setup / "calibrated"))
    assert crrelu_llm.epsilon_values(loaded) == pytest.approx(expected)
    # on the first layer (whose inputs the patch does not change) the probe agrees it is the least-squares value
    probe = evaluate.run_probe(
        setup / "calibrated", data, original=original, max_samples=32, split="train", out=setup / "calibrated-probe"
    )
    first = probe["layers"][0]
    assert first["least_squares_epsilon"] == pytest.approx(first["epsilon"], rel=1e-4)
    assert cli_main(["patch", original, "--out", str(setup / "x"), "--epsilon-init", "calibrate"]) == 2
    assert (
        "needs an activation with least_squares_init (crrelu, swish_beta) and --calibration-data"
        in capsys.readouterr().err
    )
    assert not (setup / "x").exists()


def test_distillation_cuts_the_kl_to_the_original(setup):
    original, data = str(setup / "original"), str(setup / "data")
    assert cli_main(["patch", original, "--out", str(setup / "step0")]) == 0
    before = evaluate.run_drift(setup / "step0", original, data, max_samples=40)["kl_patched_original"]
    path = _recipe(
        setup,
        "distilled",
        model_name_or_path=original,
        activation="crrelu",
        max_steps=30,
        learning_rate=1e-3,
        temperature=1.0,
        mlp_mse_weight=1.0,
    )
    metrics = run("distill", *parse_recipe("distill", ["--config", str(path)]))
    after = evaluate.run_drift(setup / "distilled", original, data, max_samples=40)["kl_patched_original"]
    assert before > 0 and after < before / 2
    out = setup / "distilled"
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("distill/kl" in e and "distill/mlp_mse" in e and "epsilon/00" in e for e in log)
    assert "final_epsilon/mean" in metrics and (out / "README.md").exists()
    assert yaml.safe_load((out / "recipe.yaml").read_text())["temperature"] == 1.0
    with pytest.raises(crrelu_llm.errors.RecipeError, match="already patched"):  # a patched teacher is refused
        path = _recipe(setup, "bad", model_name_or_path=original, teacher_model_name_or_path=str(out))
        run("distill", *parse_recipe("distill", ["--config", str(path)]))


def test_gradual_swap_blends_in_then_leaves_pure_crrelu_and_resumes_exactly(setup):
    original = str(setup / "original")
    seen = []

    class Watch(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            blends = [m for m in model.modules() if isinstance(m, BLENDS)]
            seen.append(blends[0].alpha if blends else "pure")

    straight = _recipe(setup, "gradual", model_name_or_path=original, activation="crrelu", swap_steps=3, max_steps=5)
    prepared_model = []

    class Keep(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            prepared_model.append(model)

    run("sft", *parse_recipe("sft", ["--config", str(straight)]), callbacks=[Watch(), Keep()])
    assert seen == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3), "pure", "pure"]
    assert not [m for m in prepared_model[0].modules() if isinstance(m, BLENDS)]
    for checkpoint in ("checkpoint-2", "checkpoint-4", "."):  # mid-schedule and after: the same keys
        loaded = AutoModelForCausalLM.from_pretrained(setup / "gradual" / checkpoint)
        acts = [m for m in loaded.modules() if isinstance(m, CRReLU)]
        assert len(acts) == 2 and all(type(m) is CRReLU for m in acts)
    eps = crrelu_llm.epsilon_values(AutoModelForCausalLM.from_pretrained(setup / "gradual"))
    assert all(v != pytest.approx(0.01) for v in eps.values())  # trained once blended in

    resumed = setup / "resumed-dir"
    resumed.mkdir()
    path = _recipe(
        resumed,
        "gradual",
        model_name_or_path=original,
        activation="crrelu",
        swap_steps=3,
        max_steps=5,
        dataset_name=str(setup / "data"),
    )
    with pytest.raises(Crash):
        run("sft", *parse_recipe("sft", ["--config", str(path)]), callbacks=[CrashAfterStep3()])
    assert (resumed / "gradual" / "checkpoint-2").exists()
    run("sft", *parse_recipe("sft", ["--config", str(path)]))  # resumes mid-schedule from checkpoint-2
    a = AutoModelForCausalLM.from_pretrained(setup / "gradual")
    b = AutoModelForCausalLM.from_pretrained(resumed / "gradual")
    assert crrelu_llm.epsilon_values(a) == crrelu_llm.epsilon_values(b)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)


def test_recovery_settings_are_checked_before_anything_runs(setup, capsys):
    original = str(setup / "original")
    for overrides, message in (
        ({"activation": "relu", "epsilon_init": "calibrate"}, "(crrelu, swish_beta); relu has none"),
        ({"epsilon_init": "lots"}, "epsilon_init must be a finite number such as 0.01 or 'calibrate'"),
        ({"swap_steps": 0}, "swap_steps must be a positive number"),
        ({"temperature": 0}, "temperature must be > 0"),
    ):
        path = _recipe(setup, "refused", model_name_or_path=original, **overrides)
        assert cli_main(["distill", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    path = _recipe(setup, "refused", model_name_or_path=original, swap_steps=2)
    assert cli_main(["dpo", "--config", str(path)]) == 2
    assert "swap_steps blends the activation in during sft or distill" in capsys.readouterr().err
    assert not (setup / "refused").exists()


def test_an_arms_recovery_keeps_the_calibration_of_any_class_that_calibrates():
    """The recover stage's keys: calibration applies to every arm whose activation calibrates
    (CRReLU, Swish-beta), not only to CRReLU; the ReLU control has none to calibrate. The old
    epsilon_learning_rate name arrives under its new one."""
    from crrelu_llm.experiments.stages import recover_keys

    recover = {"epsilon_init": "calibrate", "calibration_samples": 16, "epsilon_learning_rate": 0.01, "max_steps": 5}
    for activation in ("crrelu", "swish_beta"):
        keys = recover_keys(recover, {"activation": activation})
        assert keys["epsilon_init"] == "calibrate" and keys["calibration_samples"] == 16, activation
        assert keys["activation_learning_rate"] == 0.01 and "epsilon_learning_rate" not in keys
    control = recover_keys(recover, {"activation": "relu"})
    assert {"epsilon_init", "calibration_samples", "activation_learning_rate"}.isdisjoint(control)
    assert control["max_steps"] == 5
