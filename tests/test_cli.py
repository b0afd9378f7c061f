import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from crrelu_llm import CRReLU, epsilon_values
from crrelu_llm.cli import main
from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer


def test_inspect_lists_activation_modules(capsys):
    assert main(["inspect", "tiny-bloom"]) == 0
    out = capsys.readouterr().out
    assert "MLP  transformer.h.0.mlp.gelu_impl: BloomGelu" in out
    assert "2 in feed-forward blocks would be replaced" in out


def test_inspect_json_marks_non_mlp_activations(capsys):
    assert main(["inspect", "tiny-jamba", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    verdicts = {a["path"]: a["feed_forward"] for a in data["activations"]}
    assert verdicts["model.layers.0.mamba.act"] is False
    assert verdicts["model.layers.0.feed_forward.act_fn"] is True


def test_patch_writes_a_loadable_checkpoint_with_tokenizer(tmp_path, capsys):
    source = tmp_path / "source"
    tiny_causal_lm("gpt_neox").save_pretrained(source)
    tiny_tokenizer().save_pretrained(source)
    out = tmp_path / "patched"
    assert main(["patch", str(source), "--out", str(out), "--epsilon-init", "0.02", "--layers", "1"]) == 0
    assert "NeoX" in capsys.readouterr().out
    report = json.loads((out / "patch_report.json").read_text())
    assert report["count"] == 1 and report["layers"] == [1]
    assert (out / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert [type(layer.mlp.act).__name__ for layer in model.gpt_neox.layers] == ["GELUActivation", "CRReLU"]
    assert list(epsilon_values(model).values()) == [pytest.approx(0.02)]
    # inspect reads the record back
    assert main(["inspect", str(out)]) == 0
    assert "Already patched: 1 module(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["patch", "tiny-gpt2", "--activation", "crelu"], "did you mean 'crrelu'"),
        (["patch", "tiny-gpt2", "--layers", "7"], "out of range: the model has 2 blocks"),
        (["patch", "tiny-mamba"], "no activation module in a feed-forward block"),
        (["inspect", "tiny-gtp2"], "did you mean gpt2"),
        (["inspect", "/no/such/dir"], "no such local directory exists"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(argv, message, tmp_path, capsys):
    if argv[0] == "patch":
        argv = argv + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no half-written temporary directory left behind


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["patch", "tiny-gpt2", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["patch", "tiny-gpt2", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(isinstance(m, CRReLU) for m in model.modules()) == 2


def test_bad_flag_values_are_one_line_usage_errors(capsys):
    assert main(["patch", "tiny-gpt2", "--out", "x", "--layers", "a,b"]) == 2
    err = capsys.readouterr().err
    assert "--layers takes comma-separated block indices" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "crrelu_llm.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "crrelu-llm" in result.stdout


SUBCOMMANDS = [
    ["inspect"],
    ["patch"],
    ["export"],
    ["eval"],
    ["eval", "rewards"],
    ["eval", "winrate"],
    ["eval", "drift"],
    ["eval", "benchmark"],
    ["probe"],
    ["compare"],
    ["experiment"],
    ["demo"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_s_help_says_what_it_does_and_every_option_has_text(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]  # after the usage block
    assert description[0].isupper() and not description.startswith(("options", "positional"))
    options = out[out.index("options:") :].splitlines()[1:]
    flags = [line.split()[0].rstrip(",") for line in options if line.startswith("  -")]
    undocumented = [
        line.strip()
        for line in options
        if line.startswith("  -")
        and len(line.split()) <= 2
        and not any(o.startswith(" " * 10) and o.strip() for o in options[options.index(line) + 1 :][:1])
    ]
    assert flags and not undocumented, undocumented


@pytest.mark.parametrize(
    "command", ["sft", pytest.param("dpo", marks=pytest.mark.slow), pytest.param("distill", marks=pytest.mark.slow)]
)  # each one a subprocess of 7-8 s: one in the fast tier
def test_training_help_shows_this_project_s_options_first_and_no_gpu_warning(command):
    result = subprocess.run(
        [sys.executable, "-m", "crrelu_llm.cli", command, "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "no GPU found" not in result.stderr + result.stdout
    head = "\n".join(result.stdout.splitlines()[:40])
    for word in ("--config", "--arm", "--activation", "--epsilon_init", "--activation_learning_rate"):
        assert word in head, word
    assert len(result.stdout.splitlines()) > 300  # TRL's own keys follow


def test_the_command_line_and_the_runner_default_to_what_the_library_functions_do():
    """One owner for evaluation defaults: the library functions. The command line and the
    experiment runner must not drift from them."""
    import inspect

    from crrelu_llm.cli import build_parser
    from crrelu_llm.evaluation import benchmark, evaluate
    from crrelu_llm.evaluation.generation import GenerationSettings
    from crrelu_llm.experiments.evaluations import EVALUATION_DEFAULTS

    def library(function):
        return {
            k: p.default
            for k, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty
        }

    parse = build_parser().parse_args
    data = ["--data", "d"]
    cases = {
        "rewards": (
            parse(["eval", "rewards", "--model", "m", "--reference", "r", *data]),
            library(evaluate.run_rewards),
        ),
        "drift": (parse(["eval", "drift", "--model", "m", "--original", "o", *data]), library(evaluate.run_drift)),
        "probe": (parse(["probe", "m", *data]), library(evaluate.run_probe)),
        "benchmark": (parse(["eval", "benchmark", "--model", "m", "--tasks", "t"]), library(benchmark.run_benchmark)),
        "winrate": (
            parse(["eval", "winrate", "--model", "m", "--baseline", "b", "--judge", "j", *data]),
            {
                **library(evaluate.run_winrate),
                "max_new_tokens": GenerationSettings.max_new_tokens,
                "batch_size": GenerationSettings.batch_size,
                "seed": GenerationSettings.seed,
            },
        ),
    }
    for kind, (args, defaults) in cases.items():
        for key, value in defaults.items():
            if hasattr(args, key):
                assert getattr(args, key) == value, f"crrelu-llm {kind} --{key.replace('_', '-')}"
        for key, value in EVALUATION_DEFAULTS[kind].items():
            assert key not in defaults or defaults[key] == value, f"experiment {kind}: {key}"


def test_messages_nobody_can_act_on_are_dropped_and_other_warnings_shown_once(capfd, monkeypatch):
    """DeepSpeed's accelerator guess (its own logger, on stdout) and lm-eval's notes about the model
    this project hands it are dropped; any other warning appears once however often it is logged.
    Only the command's own handler is filtered: a handler that was there before (pytest's) is not."""
    import logging

    from crrelu_llm import runtime

    root = logging.getLogger()
    before = root.handlers[:]
    kept = logging.StreamHandler()  # stands for a handler the caller had: left unfiltered
    monkeypatch.setattr(root, "handlers", [])
    deepspeed = logging.getLogger("DeepSpeed")
    monkeypatch.setattr(deepspeed, "filters", [])
    monkeypatch.setattr(deepspeed, "handlers", [logging.StreamHandler()])
    try:
        runtime.configure_logging("%(name)s: %(message)s")
        runtime.configure_logging("%(name)s: %(message)s")  # idempotent: one handler, one filter
        assert len(root.handlers) == 1 and len(deepspeed.filters) == 1
        deepspeed.warning("Setting accelerator to CPU. If you have GPU or other accelerator, ...")
        lm_eval = logging.getLogger("lm_eval.models.huggingface")
        for _ in range(3):
            lm_eval.warning("Passed an already-initialized model through `pretrained`, assuming single-process")
            lm_eval.warning("something a user should read")
        err = capfd.readouterr().err
        assert "Setting accelerator" not in err and "already-initialized" not in err
        assert err.count("something a user should read") == 1
        root.handlers = [kept]
        runtime.configure_logging()
        assert not kept.filters  # a handler that was there before is left alone
    finally:
        root.handlers = before


def test_every_flag_of_every_command_takes_both_spellings_and_shows_its_default():
    """One rule for every command, as TRL's parser has it for the training commands:
    --two-word and --two_word, and every default in --help."""
    import argparse

    from crrelu_llm.cli import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0]
    checked = 0
    stack = list(subparsers.choices.values())
    while stack:
        sub = stack.pop()
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack += list(action.choices.values())
            for flag in action.option_strings:
                if flag.startswith("--") and "-" in flag[2:]:
                    assert "--" + flag[2:].replace("-", "_") in action.option_strings, (sub.prog, flag)
                    checked += 1
        help_text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and action.help:
                assert f"(default: {action.default})" in " ".join(help_text.split()) or "default" in action.help, (
                    sub.prog,
                    action.option_strings,
                )
    assert checked > 30


def test_patch_takes_the_underscore_spelling(tmp_path, capsys):
    out = tmp_path / "p"
    assert (
        main(
            [
                "patch",
                "tiny-gpt2",
                "--out",
                str(out),
                "--activation",
                "swish_beta",
                "--activation_kwargs",
                '{"beta_init": 1.702}',
            ]
        )
        == 0
    )
    assert json.loads((out / "patch_report.json").read_text())["activation_kwargs"] == {"beta_init": 1.702}


def test_a_flag_in_an_error_is_named_as_typed():
    from crrelu_llm.cli import build_parser
    from crrelu_llm.errors import UsageError

    for typed in ("--calibration-samples", "--calibration_samples"):
        with pytest.raises(UsageError) as raised:
            build_parser().parse_args(["patch", "m", "--out", "o", typed, "0"])
        assert f"argument {typed}: must be a whole number" in str(raised.value)
    assert "argument --calibration_samples: must be a whole number" in str(raised.value)


def test_the_training_commands_show_the_activation_they_patch_by_default():
    result = subprocess.run(
        [sys.executable, "-m", "crrelu_llm.cli", "dpo", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0
    assert "(default: crrelu)" in " ".join(result.stdout.split())
