"""Help or harm: lm-eval benchmarks on crrelu-llm models, activation probes, detectable differences."""

import json
import math
import sys

import pytest
import torch

from crrelu_llm.cli import main as cli_main
from crrelu_llm.data.encoding import encode_pairs
from crrelu_llm.evaluation import evaluate
from crrelu_llm.evaluation.bench_tasks import ITEMS, LOCAL_TASKS, items
from crrelu_llm.evaluation.benchmark import run_benchmark
from crrelu_llm.evaluation.results import BENCHMARK
from crrelu_llm.evaluation.scoring import multiple_choice_accuracy
from crrelu_llm.evaluation.tasks import generate_task_data, write_task_files
from crrelu_llm.patching.loading import load_causal_lm
from crrelu_llm.patching.patch import epsilon_parameters, patch_model
from crrelu_llm.patching.probe import activation_statistics, calibrated_epsilons, reference_activations
from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer
from crrelu_llm.stats import detectable_difference


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An original GELU model, its CRReLU patch with trained-looking (non-default) eps, and data."""
    root = tmp_path_factory.mktemp("capability")
    original = tiny_causal_lm("gpt2", n_positions=64)
    original.save_pretrained(root / "original")
    tiny_tokenizer().save_pretrained(root / "original")
    patched = tiny_causal_lm("gpt2", n_positions=64)
    patch_model(patched, "crrelu")
    with torch.no_grad():
        for i, p in enumerate(epsilon_parameters(patched).values()):
            p.fill_(0.25 + 0.5 * i)
    patched.save_pretrained(root / "crrelu")
    tiny_tokenizer().save_pretrained(root / "crrelu")
    write_task_files("arithmetic", root / "data", 60, 40)
    return root


def test_the_shipped_task_items_are_reproducible_and_held_out_from_the_demo_training_prompts():
    assert [json.loads(line) for line in ITEMS.read_text().splitlines()] == items()
    test = [r for r in items() if r["split"] == "test"]
    assert len(test) == 500 and len({r["question"] for r in items()}) == len(items())
    demo_train = {r["prompt"] for r in generate_task_data("arithmetic", 5500, 0)[:5000]}
    assert not demo_train & {r["question"] for r in items()}
    for r in test:
        a, b = map(int, r["question"][:-1].split("+"))
        assert r["choices"][r["answer"]] == f"{a + b}." and len(set(r["choices"])) == 4
    assert "crrelu_arith_mc" in LOCAL_TASKS


def test_lm_eval_accuracy_equals_our_own_log_probabilities_on_a_crrelu_checkpoint(models):
    """lm-eval scores the model crrelu-llm loaded: trained eps and all."""
    result = run_benchmark(models / "crrelu", ["crrelu_arith_mc"], limit=120)["crrelu_arith_mc"]
    assert list(result["epsilons"].values()) == pytest.approx([0.25, 0.75])
    ours = multiple_choice_accuracy(
        load_causal_lm(str(models / "crrelu")), tiny_tokenizer(), [r for r in items() if r["split"] == "test"][:120]
    )
    assert result["n"] == ours["n"] == 120
    assert result["metrics"]["acc"]["value"] == pytest.approx(ours["accuracy"])
    stderr = result["metrics"]["acc"]["stderr"]
    p = ours["accuracy"]
    assert stderr == pytest.approx(math.sqrt(p * (1 - p) / 119), rel=1e-6)  # lm-eval's sample stderr
    assert json.loads(BENCHMARK.file(models / "crrelu", label="crrelu_arith_mc").read_text())["n"] == 120


def test_benchmark_command_and_its_bad_input(models, capsys, monkeypatch):
    out = models / "bench-cli"
    assert (
        cli_main(
            [
                "eval",
                "benchmark",
                "--model",
                str(models / "original"),
                "--tasks",
                "crrelu_arith_mc",
                "--limit",
                "20",
                "--num-fewshot",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "crrelu_arith_mc: acc " in printed and "n=20" in printed
    assert json.loads((out / "benchmark-crrelu_arith_mc.json").read_text())["num_fewshot"] == 2
    for argv, message in (
        (["--tasks", "no_such_task"], "unknown lm-eval task 'no_such_task'"),
        (["--tasks", ","], "--tasks needs at least one"),
        (["--tasks", "crrelu_arith_mc", "--limit", "0"], "--limit must be positive"),
        (
            ["--tasks", "crrelu_arith_mc", "--batch-size", "0"],
            "--batch-size: must be a whole number of at least 1, got '0'",
        ),
    ):
        assert (
            cli_main(["eval", "benchmark", "--model", str(models / "original"), "--out", str(models / "bad"), *argv])
            == 2
        )
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    monkeypatch.chdir(models)  # a mistyped model name is refused before ./eval is created
    for argv in (
        ["eval", "benchmark", "--model", "no-such-model", "--tasks", "crrelu_arith_mc"],
        ["probe", "no-such-model", "--data", str(models / "data")],
        ["eval", "drift", "--model", "no-such-model", "--original", "no-such-model", "--data", "x"],
    ):
        assert cli_main(argv) == 2
        assert not (models / "eval").exists(), argv
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # not installed
    assert cli_main(["eval", "benchmark", "--model", str(models / "original"), "--tasks", "crrelu_arith_mc"]) == 2
    assert "pip install 'crrelu-llm[bench]'" in capsys.readouterr().err


def _captured_inputs(model, tokenizer, pairs):
    """Every feed-forward activation input over the non-padding tokens, captured independently."""
    captured = {}
    sites = [p for p in reference_activations(model)]
    handles = []
    for path in sites:

        def hook(module, inputs, output, path=path):
            captured.setdefault(path, []).append(inputs[0])

        handles.append(model.get_submodule(path).register_forward_hook(hook))
    ids, attention, _ = encode_pairs(tokenizer, pairs, 1024)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=attention)
    for h in handles:
        h.remove()
    return {path: torch.cat(xs)[attention.bool()].double() for path, xs in captured.items()}


def test_probe_statistics_and_least_squares_epsilon_match_a_direct_computation(models):
    tokenizer = tiny_tokenizer()
    pairs = [(r["prompt"], r["chosen"]) for r in generate_task_data("arithmetic", 24, 3)]
    original = load_causal_lm(str(models / "original"))
    layers = activation_statistics(original, tokenizer, pairs, reference_activations(original), batch_size=5)
    inputs = _captured_inputs(original, tokenizer, pairs)
    for layer in layers:
        x = inputs[layer["path"]]
        z = (x - x.mean()) / x.std(unbiased=False)
        assert layer["n"] == x.numel()
        assert layer["mean"] == pytest.approx(float(x.mean()), abs=1e-9)
        assert layer["sd"] == pytest.approx(float(x.std(unbiased=False)), rel=1e-6)
        assert layer["skewness"] == pytest.approx(float((z**3).mean()), rel=1e-5, abs=1e-6)
        assert layer["excess_kurtosis"] == pytest.approx(float((z**4).mean() - 3), rel=1e-5, abs=1e-6)
        assert layer["share_negative"] == pytest.approx(float((x < 0).double().mean()))
        gelu = original.get_submodule(layer["path"])
        g, d = x * torch.exp(-x * x / 2), gelu.forward(x) - torch.relu(x)
        best = float((g * d).sum() / (g * g).sum())
        assert layer["least_squares_epsilon"] == pytest.approx(best, rel=1e-6)

        def error(eps, x=x, g=g, gelu=gelu):
            return float(((torch.relu(x) + eps * g - gelu.forward(x)) ** 2).sum())

        assert error(best) < min(error(best + 0.01), error(best - 0.01))  # it is the least-squares value
        assert layer["epsilon"] is None and layer["output_zero"] == 0.0
    calibrated = calibrated_epsilons(original, tokenizer, pairs, batch_size=5)
    assert calibrated == {layer["path"]: layer["least_squares_epsilon"] for layer in layers}
    with pytest.raises(Exception, match="unpatched"):
        calibrated_epsilons(load_causal_lm(str(models / "crrelu")), tokenizer, pairs)


def test_probe_command_on_a_patched_model_knows_its_original(models, capsys):
    data = str(models / "data")
    assert (
        cli_main(
            [
                "probe",
                str(models / "crrelu"),
                "--data",
                data,
                "--max-samples",
                "20",
                "--original",
                str(models / "original"),
                "--out",
                str(models / "p1"),
            ]
        )
        == 0
    )
    assert "eps (LS)" in capsys.readouterr().out
    with_original = json.loads((models / "p1" / "probe.json").read_text())["layers"]
    recorded = evaluate.run_probe(models / "crrelu", data, max_samples=20, out=models / "p2")["layers"]
    for a, b in zip(with_original, recorded):  # the patch record names the class it replaced
        assert a["original_type"] == b["original_type"] == "NewGELUActivation"
        assert a["least_squares_epsilon"] == pytest.approx(b["least_squares_epsilon"])
    assert [layer["epsilon"] for layer in recorded] == pytest.approx([0.25, 0.75])
    assert all(layer["output_zero"] == 0 for layer in recorded)  # CRReLU is never exactly zero off x=0
    relu = tiny_causal_lm("gpt2", n_positions=64)
    patch_model(relu, "relu")
    layers = activation_statistics(relu, tiny_tokenizer(), [("1+2=", "3.")], reference_activations(relu))
    assert all(layer["output_zero"] == pytest.approx(layer["share_negative"]) for layer in layers)
    assert cli_main(["probe", str(models / "crrelu"), "--data", str(models / "nowhere")]) == 2


def test_detectable_difference_matches_the_textbook_formula():
    # two arms, 256 items each, p = 1/2: (1.96 + 0.84) * sqrt(2 * 0.25 / 256)
    assert detectable_difference(256) == pytest.approx(2.8016 * math.sqrt(0.5 / 256), rel=1e-4)
    assert detectable_difference(256, two_samples=False) == pytest.approx(2.8016 * math.sqrt(0.25 / 256), rel=1e-4)
    assert detectable_difference(1024) == pytest.approx(detectable_difference(256) / 2)
    assert math.isnan(detectable_difference(0))


def test_a_benchmark_outside_a_git_checkout_prints_no_git_error(models, capfd, monkeypatch, tmp_path):
    """lm-eval asks git for a commit hash; outside a checkout git's "fatal:" line reached every demo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no checkout above it either
    run_benchmark(models / "crrelu", ["crrelu_arith_mc"], limit=8, out=tmp_path / "bench")
    assert "fatal:" not in capfd.readouterr().err
