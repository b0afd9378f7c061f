"""A LoRA run is a checkpoint like any other: every command loads it, evaluates it, continues from
it and exports it; its eps are the adapter's, bit for bit; an experiment's arms may use LoRA."""

import json
import random

import pytest
import torch

from crrelu_llm.cli import main as cli_main

from helpers import small_recipe


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    rng = random.Random(0)
    rows = []
    for _ in range(40):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"{a}+{b}=", "chosen": f"{a + b}.", "rejected": f"{a + b + 1}."})
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp / "peft"
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
                "3",
                "--learning_rate",
                "1e-2",
                "--epsilon_learning_rate",
                "1e-2",
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
    assert (run / "adapter_config.json").exists() and not (run / "config.json").exists()
    return tmp, run, data


def test_a_lora_run_loads_with_the_eps_its_adapter_stores_and_merges_exactly(lora_run):
    from safetensors.torch import load_file

    from crrelu_llm import epsilon_values
    from crrelu_llm.patching.loading import load_adapter_run, load_causal_lm

    _, run, _ = lora_run
    merged = load_causal_lm(str(run))
    stored = {
        k.removeprefix("base_model.model.").removesuffix(".epsilon"): v.item()
        for k, v in load_file(run / "adapter_model.safetensors").items()
        if k.endswith(".epsilon")
    }
    assert epsilon_values(merged) == stored and len(stored) == 2
    assert any(v != 0.01 for v in stored.values())  # eps trained with the adapter
    unmerged = load_adapter_run(run, merge=False)
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, unmerged(ids).logits, atol=1e-5, rtol=0)


def test_every_command_takes_a_lora_run(lora_run, capsys):
    tmp, run, data = lora_run
    commands = [
        ["eval", "rewards", "--model", str(run), "--reference", "tiny-llama", "--data", str(data)],
        ["eval", "drift", "--model", str(run), "--original", "tiny-llama", "--data", str(data)],
        [
            "eval",
            "winrate",
            "--model",
            str(run),
            "--baseline",
            "tiny-llama",
            "--data",
            str(data),
            "--judge",
            "rule:arithmetic",
            "--num-prompts",
            "4",
            "--max-new-tokens",
            "3",
        ],
        ["eval", "benchmark", "--model", str(run), "--tasks", "crrelu_arith_mc", "--limit", "8"],
        ["probe", str(run), "--data", str(data)],
    ]
    for argv in commands:
        assert cli_main([*argv, "--out", str(tmp / "eval" / argv[1])]) == 0, argv
    exported = tmp / "exported"
    assert cli_main(["export", str(run), "--out", str(exported)]) == 0
    from transformers import AutoModelForCausalLM

    from crrelu_llm.patching.loading import load_causal_lm

    shared = AutoModelForCausalLM.from_pretrained(exported, trust_remote_code=True)
    ids = torch.randint(3, 100, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(shared(ids).logits, load_causal_lm(str(run))(ids).logits, atol=1e-5, rtol=0)
    further = tmp / "further"
    assert (
        cli_main(
            [
                "dpo",
                "--model_name_or_path",
                str(run),
                "--dataset_name",
                str(data),
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "4",
                "--report_to",
                "none",
                "--output_dir",
                str(further),
            ]
        )
        == 0
    )
    report = json.loads((further / "patch_report.json").read_text())
    assert report["already_patched"] is True  # started from the merged run: its patch and eps kept
    assert (
        "a LoRA run: this run started from its adapter merged into its base `tiny-llama`"
        in (further / "README.md").read_text()
    )


def test_a_directory_that_is_no_model_is_named_so_without_a_word_about_the_network(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["export", str(empty), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "is not a model directory (no config.json or adapter_config.json)" in err
    assert "internet" not in err and "offline" not in err


@pytest.mark.slow
def test_an_experiment_whose_arms_use_lora_runs_every_stage(tmp_path):
    lora = {"use_peft": True, "lora_r": 4}
    recipe = small_recipe(
        tmp_path,
        {"gelu": {"activation": None, **lora}, "crrelu": {"activation": "crrelu", **lora}},
        evaluations={
            "drift": {"max_samples": 10},
            "rewards": {"max_samples": 20, "max_length": 32},
            "probe": {"max_samples": 10},
            "winrate": {"judge": "rule:arithmetic", "num_prompts": 10, "max_new_tokens": 4},
        },
    )
    out = tmp_path / "out"
    assert cli_main(["experiment", "--config", str(recipe), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {s["status"] for s in summary["stages"]} == {"ran"}
    for arm in ("gelu", "crrelu"):
        for stage in ("sft", "dpo-beta0.5-seed0"):
            assert (out / arm / stage / "adapter_config.json").exists()
    row = next(r for r in summary["rows"] if r["arm"] == "crrelu")
    assert row["reward_accuracy"]["n"] == 20 and row["winrate_vs-gelu"]["n"] == 10
    stages = {(r["arm"], r["stage"]) for r in summary["help_or_harm"]}
    assert ("crrelu", "DPO beta=0.5 seed=0") in stages and ("crrelu", "SFT") in stages


def test_a_recipe_may_continue_the_adapter_itself(lora_run, capsys):
    from safetensors.torch import load_file

    tmp, run, data = lora_run
    common = [
        "--model_name_or_path",
        str(run),
        "--dataset_name",
        str(data),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--continue_adapter",
        "true",
    ]
    assert cli_main(["dpo", *common, "--output_dir", str(tmp / "refused")]) == 2  # without use_peft
    assert "continue_adapter: true trains a LoRA run's adapter further" in capsys.readouterr().err
    assert not (tmp / "refused").exists()
    further = tmp / "continued"
    assert (
        cli_main(
            [
                "dpo",
                *common,
                "--use_peft",
                "true",
                "--learning_rate",
                "0",
                "--epsilon_learning_rate",
                "0",
                "--output_dir",
                str(further),
            ]
        )
        == 0
    )
    before, after = load_file(run / "adapter_model.safetensors"), load_file(further / "adapter_model.safetensors")
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)  # the same adapter
    assert "this run trained its adapter further" in (further / "README.md").read_text()
