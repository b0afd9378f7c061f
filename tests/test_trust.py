"""Loading a checkpoint runs no code the checkpoint names unless the caller trusts it
(crrelu_llm.patching.trust): the promise transformers makes with trust_remote_code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from crrelu_llm import patch_model
from crrelu_llm.cli import main as cli_main
from crrelu_llm.errors import PatchError
from crrelu_llm.patching.tiny import tiny_causal_lm
from crrelu_llm.patching.trust import ENV

LEARNED_SWISH = """
import torch
from torch import nn

print("MYACTS RAN")


class LearnedSwish(nn.Module):
    def __init__(self, beta_init: float = 1.0):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor([float(beta_init)]))

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)
"""


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    """A tiny GPT-2 patched with ``myacts:LearnedSwish`` (a user's class), saved; ``myacts`` importable."""
    (tmp_path / "myacts.py").write_text(textwrap.dedent(LEARNED_SWISH))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV, raising=False)
    model = tiny_causal_lm("gpt2")
    patch_model(model, "myacts:LearnedSwish", activation_kwargs={"beta_init": 1.5})
    model.save_pretrained(tmp_path / "ckpt")
    from crrelu_llm.patching.tiny import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    sys.modules.pop("myacts", None)
    yield tmp_path / "ckpt"
    sys.modules.pop("myacts", None)


def _fresh(code: str, cwd, env_extra=None, path=None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (nothing imported yet), as a user's ``python -c`` would."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")])),
        **(env_extra or {}),
    }
    env.pop(ENV, None) if not env_extra or ENV not in env_extra else None
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, env=env
    )


LOAD = """
    import sys, crrelu_llm
    from transformers import AutoModelForCausalLM
    try:
        AutoModelForCausalLM.from_pretrained({ckpt!r}{extra})
        print("LOADED")
    except Exception as err:
        print("REFUSED", type(err).__name__, str(err).splitlines()[0])
    print("IMPORTED" if {module!r} in sys.modules else "NOT IMPORTED")
"""


def test_an_untrusted_load_imports_nothing_and_says_how_to_trust(checkpoint, tmp_path):
    done = _fresh(LOAD.format(ckpt=str(checkpoint), extra="", module="myacts"), tmp_path / "ckpt", path=str(tmp_path))
    assert "REFUSED PatchError" in done.stdout and "NOT IMPORTED" in done.stdout, done.stdout + done.stderr
    assert "MYACTS RAN" not in done.stdout
    assert "trust_remote_code=True" in done.stdout and f"{ENV}=myacts:LearnedSwish" in done.stdout


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_trusted_load_works(checkpoint, tmp_path, how):
    extra = ", trust_remote_code=True" if how == "flag" else ""
    env = {ENV: "other:Thing,myacts:LearnedSwish"} if how == "env" else None
    done = _fresh(LOAD.format(ckpt=str(checkpoint), extra=extra, module="myacts"), tmp_path, env, str(tmp_path))
    assert "LOADED" in done.stdout and "IMPORTED" in done.stdout, done.stdout + done.stderr


def test_a_checkpoint_edited_to_name_another_installed_module_imports_nothing(checkpoint, tmp_path):
    for name in ("config.json", "patch_report.json"):
        file = checkpoint / name
        if file.exists():
            file.write_text(file.read_text().replace("myacts:LearnedSwish", "this:Anything"))
    done = _fresh(LOAD.format(ckpt=str(checkpoint), extra="", module="this"), tmp_path)
    assert "REFUSED" in done.stdout and "NOT IMPORTED" in done.stdout, done.stdout + done.stderr
    assert "Beautiful is better than ugly" not in done.stdout


def test_a_downloaded_folder_with_its_own_module_runs_nothing_from_its_working_directory(checkpoint, tmp_path):
    """python -c puts the working directory first on sys.path: a folder shipping evil.py and naming
    evil:X would run evil.py for a user who starts Python in it."""
    (checkpoint / "evil.py").write_text("print('EVIL RAN')\n")
    config = checkpoint / "config.json"
    config.write_text(config.read_text().replace("myacts:LearnedSwish", "evil:X"))
    done = _fresh(LOAD.format(ckpt=".", extra="", module="evil"), checkpoint)
    assert "EVIL RAN" not in done.stdout and "NOT IMPORTED" in done.stdout, done.stdout + done.stderr


def test_kwargs_are_data_bound_to_the_signature(checkpoint):
    from crrelu_llm.patching.record import recorded_activation
    from crrelu_llm.patching.trust import trusting

    entry = {"activation": "myacts:LearnedSwish", "activation_kwargs": {"__import__('os').system('x')": 1}}
    with trusting(activations=["myacts:LearnedSwish"]), pytest.raises(PatchError, match="cannot be built"):
        recorded_activation(entry)


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "{ckpt}", "--data", "{data}", "--max-samples", "4"],
        ["eval", "drift", "--model", "{ckpt}", "--original", "tiny-gpt2", "--data", "{data}", "--max-samples", "4"],
        ["eval", "rewards", "--model", "{ckpt}", "--reference", "tiny-gpt2", "--data", "{data}", "--max-samples", "4"],
        [
            "eval",
            "winrate",
            "--model",
            "{ckpt}",
            "--baseline",
            "tiny-gpt2",
            "--data",
            "{data}",
            "--judge",
            "rule:arithmetic",
            "--num-prompts",
            "4",
            "--max-new-tokens",
            "2",
        ],
        ["export", "{ckpt}", "--out", "{out}"],
        [
            "pairs",
            "{ckpt}",
            "--data",
            "{data}",
            "--judge",
            "rule:arithmetic",
            "--num-prompts",
            "4",
            "--max-new-tokens",
            "2",
            "--out",
            "{out}",
        ],
    ],
)
def test_each_command_s_trust_flag_reaches_the_loader(checkpoint, tmp_path, capsys, argv):
    from crrelu_llm.evaluation.tasks import write_task_files

    data = write_task_files("arithmetic", tmp_path / "data", 8, 4)
    argv = [a.format(ckpt=checkpoint, data=data, out=tmp_path / "out") for a in argv]
    assert cli_main(argv) == 2
    assert "names the activation class 'myacts:LearnedSwish'" in capsys.readouterr().err
    assert "myacts" not in sys.modules and not (tmp_path / "out").exists()
    code = cli_main([*argv, "--trust-remote-code"])
    err = capsys.readouterr().err
    assert "names the activation class" not in err  # it got past the load (pairs may find no pair: exit 2)
    assert code == 0 or "no pair left" in err, err


def test_a_training_run_from_such_a_checkpoint_needs_the_recipe_s_trust(checkpoint, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+{a}=", "chosen": f"{2 * a}.", "rejected": f"{2 * a + 1}."}) + "\n"
            for a in range(10)
        )
        * 2
    )
    argv = [
        "sft",
        "--model_name_or_path",
        str(checkpoint),
        "--dataset_name",
        str(data),
        "--max_steps",
        "1",
        "--activation",
        "none",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--output_dir",
        str(tmp_path / "run"),
    ]
    assert cli_main(argv) == 2 and "names the activation class" in capsys.readouterr().err
    assert cli_main([*argv, "--trust_remote_code", "true"]) == 0


def test_a_lora_run_of_a_user_class_loads_under_trust(checkpoint, tmp_path, capsys):
    from crrelu_llm.patching.loading import load_causal_lm
    from crrelu_llm.patching.patch import activation_parameters
    from crrelu_llm.patching.trust import trusting

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+{a}=", "chosen": f"{2 * a}.", "rejected": f"{2 * a + 1}."}) + "\n"
            for a in range(10)
        )
        * 2
    )
    run = tmp_path / "lora"
    assert (
        cli_main(
            [
                "dpo",
                "--model_name_or_path",
                "tiny-gpt2",
                "--dataset_name",
                str(data),
                "--use_peft",
                "true",
                "--lora_r",
                "4",
                "--max_steps",
                "2",
                "--activation",
                "myacts:LearnedSwish",
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
    )  # the recipe names it: trusted
    sys.modules.pop("myacts", None)
    with pytest.raises(PatchError, match="the adapter run"):
        load_causal_lm(str(run))
    assert "myacts" not in sys.modules
    merged = load_causal_lm(str(run), trust_remote_code=True)
    with trusting(activations=["myacts:LearnedSwish"]):
        again = load_causal_lm(str(run))
    betas = {n: float(p) for n, p in activation_parameters(merged).items()}
    assert betas and all(v != 1.0 for v in betas.values())
    assert all(torch.equal(p, activation_parameters(again)[n]) for n, p in activation_parameters(merged).items())
