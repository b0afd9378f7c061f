"""Any activation by import path (``module:Class``), the built-in candidates, and what the rest of
the toolkit does with their parameters: own optimizer group, logs, checkpoints, PEFT, export."""

import json
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from crrelu_llm import patch_model
from crrelu_llm.cli import main as cli_main
from crrelu_llm.errors import PatchError
from crrelu_llm.patching.patch import activation_logs, activation_parameters, peft_modules_to_save
from crrelu_llm.patching.tiny import tiny_causal_lm

USER_CLASSES = '''
import torch
from torch import nn

HELPER_SCALE = 2.0


class ScaledSquaredReLU(nn.Module):
    """alpha * relu(x)**2 with a learnable alpha."""

    def __init__(self, alpha_init: float = 0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x):
        return self.alpha * torch.relu(x) ** 2


class NeedsHelper(nn.Module):
    def forward(self, x):
        return HELPER_SCALE * torch.relu(x)


class Halver(nn.Module):
    def forward(self, x):
        return x[..., ::2]


NOT_A_CLASS = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``my_acts``: a user's activation classes, importable while the test runs."""
    (tmp_path / "my_acts.py").write_text(textwrap.dedent(USER_CLASSES))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_acts"
    sys.modules.pop("my_acts", None)


def test_a_user_class_patches_and_loads_back_bit_for_bit(user_module, tmp_path):
    model = tiny_causal_lm("gpt2")
    report = patch_model(model, f"{user_module}:ScaledSquaredReLU", activation_kwargs={"alpha_init": 0.25})
    assert report.count == 2 and {r.new_type for r in report.replaced} == {"ScaledSquaredReLU"}
    params = activation_parameters(model)
    assert sorted(params) == ["transformer.h.0.mlp.act.alpha", "transformer.h.1.mlp.act.alpha"]
    assert activation_logs(model)["alpha/00"] == 0.25
    with torch.no_grad():
        for i, p in enumerate(params.values()):
            p.fill_(0.3 + 0.123456789 * i)
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    entry = config["crrelu_llm_patch"]["modules"]["transformer.h.0.mlp.act"]
    assert entry["activation"] == "my_acts:ScaledSquaredReLU" and entry["activation_kwargs"] == {"alpha_init": 0.25}
    assert config["model_type"].startswith("crrelu-")  # plain transformers refuses it: never silently GELU
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)  # a user class: trusted
    for name, p in activation_parameters(loaded).items():
        assert torch.equal(p, params[name])
    ids = torch.randint(0, 50, (1, 6))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert peft_modules_to_save(loaded) == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]


def test_a_class_that_cannot_be_imported_at_load_time_is_named_in_one_line(user_module, tmp_path, monkeypatch):
    model = tiny_causal_lm("gpt2")
    patch_model(model, f"{user_module}:ScaledSquaredReLU")
    model.save_pretrained(tmp_path / "ckpt")
    sys.modules.pop("my_acts", None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(PatchError, match="module 'my_acts' cannot be imported"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)


@pytest.mark.parametrize(
    "name, words",
    [
        ("my_acts:Nope", "my_acts has no 'Nope'"),
        ("not_a_module_anywhere:X", "module 'not_a_module_anywhere' cannot be imported"),
        ("my_acts:NOT_A_CLASS", "is not a torch.nn.Module class"),
        ("my_acts:Halver", "maps a (2, 3, 8) input to (2, 3, 4)"),
        (
            "torch.nn:Linear",
            "'torch.nn:Linear' does not look like an activation: Linear needs in_features, out_features",
        ),
    ],
)
def test_bad_activation_classes_are_refused_before_any_model_loads(user_module, name, words, tmp_path, capsys):
    # the model does not exist: the activation is judged first
    code = cli_main(
        [
            "sft",
            "--model_name_or_path",
            str(tmp_path / "no-such-model"),
            "--activation",
            name,
            "--dataset_name",
            str(tmp_path / "no-data.jsonl"),
            "--output_dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_user_class_trains_its_parameter_in_its_own_group(user_module, tmp_path):
    from crrelu_llm.training.recipes import recipe_from_dict
    from crrelu_llm.training.train import prepare

    from helpers import recipe

    rows = [{"prompt": f"{a}+{a}=", "chosen": f"{2 * a}.", "rejected": f"{2 * a + 1}."} for a in range(10)] * 2
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import yaml

    keys = yaml.safe_load(
        recipe(
            tmp_path,
            data,
            activation="my_acts:ScaledSquaredReLU",
            activation_kwargs={"alpha_init": 0.5},
            activation_learning_rate=0.05,
            max_steps=3,
        ).read_text()
    )
    keys.pop("epsilon_learning_rate")
    prepared = prepare("dpo", *recipe_from_dict("dpo", keys))
    trainer = prepared.trainer
    trainer.train()
    group = next(g for g in trainer.optimizer.param_groups if g.get("name") == "activation_parameters")
    assert group["initial_lr"] == 0.05 and group["weight_decay"] == 0.0 and len(group["params"]) == 2
    values = activation_logs(trainer.model)
    assert values["alpha/00"] != 0.5 and values["alpha/01"] != 0.5  # trained
    history = [h for h in trainer.state.log_history if "alpha/00" in h]
    assert history and "alpha/mean" in history[-1]


def test_swish_beta_is_built_in_and_calibrates_towards_the_activation_it_replaces():
    from transformers.activations import GELUActivation

    from crrelu_llm.ops.candidates import SwishBeta

    module = SwishBeta()
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    module.least_squares_init(x, GELUActivation()(x))
    assert 1.6 < module.beta.item() < 1.8  # x*sigmoid(1.702x) is the classic GELU approximation
    model = tiny_causal_lm("gpt2")
    assert patch_model(model, "swish_beta").count == 2 and activation_logs(model)["beta/mean"] == 1.0
    assert patch_model(tiny_causal_lm("gpt2"), "squared_relu").activation == "relu2"


def test_scalars_of_any_class_survive_deepspeeds_vector_shape(user_module):
    from crrelu_llm.ops.distributed import hold_scalars_as_vectors

    model = tiny_causal_lm("gpt2")
    patch_model(model, f"{user_module}:ScaledSquaredReLU")
    assert hold_scalars_as_vectors(model) == 2
    act = model.transformer.h[0].mlp.act
    assert act.alpha.shape == (1,) and model.state_dict()["transformer.h.0.mlp.act.alpha"].shape == ()
    state = model.state_dict()
    state["transformer.h.0.mlp.act.alpha"] = torch.tensor(0.75)
    model.load_state_dict(state)
    assert act.alpha.shape == (1,) and act.alpha.item() == 0.75


@pytest.mark.slow  # subprocesses without crrelu-llm: 11 s
def test_export_carries_a_self_contained_class_and_refuses_one_that_is_not(user_module, tmp_path, capsys):
    import subprocess

    for name in ("ScaledSquaredReLU", "NeedsHelper"):
        model = tiny_causal_lm("gpt2")
        patch_model(model, f"{user_module}:{name}")
        model.save_pretrained(tmp_path / name)
    assert (
        cli_main(
            ["export", str(tmp_path / "ScaledSquaredReLU"), "--out", str(tmp_path / "shared"), "--trust-remote-code"]
        )
        == 0
    )
    # loads where neither crrelu_llm nor my_acts can be imported
    script = (
        "import sys, torch; sys.modules['crrelu_llm'] = None; sys.modules['my_acts'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'shared')!r}, trust_remote_code=True)\n"
        "print(type(m.transformer.h[1].mlp.act).__name__, float(m.transformer.h[1].mlp.act.alpha))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["ScaledSquaredReLU", "0.5"]
    # the built-in candidate is carried too
    model = tiny_causal_lm("gpt2")
    patch_model(model, "swish_beta")
    with torch.no_grad():
        model.transformer.h[1].mlp.act.beta.fill_(1.5)
    model.save_pretrained(tmp_path / "swish")
    assert cli_main(["export", str(tmp_path / "swish"), "--out", str(tmp_path / "swish-shared")]) == 0
    script = script.replace(str(tmp_path / "shared"), str(tmp_path / "swish-shared")).replace(".alpha", ".beta")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split()[-2:] == ["SwishBeta", "1.5"], done.stderr[-2000:]
    capsys.readouterr()
    assert (
        cli_main(["export", str(tmp_path / "NeedsHelper"), "--out", str(tmp_path / "refused"), "--trust-remote-code"])
        == 2
    )
    err = capsys.readouterr().err
    assert "not self-contained" in err and "HELPER_SCALE" in err and not (tmp_path / "refused").exists()


def _pairs(tmp_path, n=24):
    rows = [{"prompt": f"{a}+{a}=", "chosen": f"{2 * a}.", "rejected": f"{2 * a + 1}."} for a in range(10)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (rows * 3)[:n]))
    return data


def test_a_lora_run_saves_and_loads_the_activation_parameters_of_any_class(tmp_path):
    from crrelu_llm.patching.loading import load_causal_lm

    data, run = _pairs(tmp_path), tmp_path / "lora"
    assert (
        cli_main(
            [
                "dpo",
                "--model_name_or_path",
                "tiny-llama",
                "--dataset_name",
                str(data),
                "--use_peft",
                "true",
                "--lora_r",
                "4",
                "--max_steps",
                "2",
                "--activation",
                "swish_beta",
                "--learning_rate",
                "1e-2",
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
    config = json.loads((run / "adapter_config.json").read_text())
    assert all(p.endswith("mlp.act_fn") for p in config["modules_to_save"]) and config["modules_to_save"]
    merged = load_causal_lm(str(run))  # checked against the adapter's tensors, bit for bit
    betas = {n: float(p) for n, p in activation_parameters(merged).items()}
    assert betas and all(v != 1.0 for v in betas.values())  # trained with the adapter, kept by the merge


def test_calibration_applies_to_any_class_with_a_least_squares_init(tmp_path):
    from crrelu_llm.patching.checkpoints import patch_checkpoint

    report = patch_checkpoint(
        "tiny-gpt2",
        tmp_path / "swish",
        activation="swish_beta",
        epsilon_init="calibrate",
        calibration_data=str(_pairs(tmp_path)),
        calibration_samples=8,
    )
    assert set(report.calibrated) == {"transformer.h.0.mlp.act", "transformer.h.1.mlp.act"}
    # the original is GPT-2's tanh GELU: a Swish imitates it best near beta 1.7
    assert all(1.4 < entry["beta"] < 2.0 for entry in report.calibrated.values()), report.calibrated
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "swish")
    assert {n: float(p) for n, p in activation_parameters(loaded).items()} == {
        f"{path}.beta": entry["beta"] for path, entry in report.calibrated.items()
    }


def test_activation_parameter_modes_freeze_or_train_alone_the_parameters_of_any_class(user_module):
    from crrelu_llm.training.models import apply_activation_parameter_mode

    model = tiny_causal_lm("gpt2")
    patch_model(model, f"{user_module}:ScaledSquaredReLU")
    apply_activation_parameter_mode(model, "only")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(activation_parameters(model))
    model = tiny_causal_lm("gpt2")
    patch_model(model, f"{user_module}:ScaledSquaredReLU")
    apply_activation_parameter_mode(model, "freeze")
    assert not any(p.requires_grad for p in activation_parameters(model).values())
    assert any(p.requires_grad for p in model.parameters())


def test_a_user_class_with_0_dim_parameters_is_refused_in_one_line_when_zero3_loads_it(user_module, monkeypatch):
    from crrelu_llm.patching import record
    from crrelu_llm.patching.trust import trusting

    entry = {"activation": f"{user_module}:ScaledSquaredReLU", "original": "GELUActivation"}
    with trusting(activations=[entry["activation"]]):  # a class a checkpoint names: trusted, as a load would be
        assert type(record.recorded_activation(entry)).__name__ == "ScaledSquaredReLU"
        monkeypatch.setattr(record, "deepspeed_zero3_enabled", lambda: True)
        with pytest.raises(PatchError, match=r"holds 0-dim parameters \(alpha\), which DeepSpeed ZeRO-3 cannot"):
            record.recorded_activation(entry)
    assert record.recorded_activation({"activation": "swish_beta"}).beta.dim() == 0  # built in: (1,) under ZeRO-3


def test_the_probe_reports_each_learned_parameter_of_any_class(tmp_path, capsys):
    model = tiny_causal_lm("gpt2")
    patch_model(model, "swish_beta")
    with torch.no_grad():
        model.transformer.h[1].mlp.act.beta.fill_(1.25)
    model.save_pretrained(tmp_path / "swish")
    from crrelu_llm.patching.tiny import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "swish")
    assert (
        cli_main(
            [
                "probe",
                str(tmp_path / "swish"),
                "--data",
                str(_pairs(tmp_path)),
                "--max-samples",
                "8",
                "--out",
                str(tmp_path / "probe"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "beta=1.25" in out and "beta=1 " in out
    layers = json.loads((tmp_path / "probe" / "probe.json").read_text())["layers"]
    assert [layer["parameters"] for layer in layers] == [{"beta": 1.0}, {"beta": 1.25}]
    assert all(layer["epsilon"] is None and layer["original_type"] == "NewGELUActivation" for layer in layers)
