"""Every shipped recipe and accelerate profile is parsed and validated (no model is loaded)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crrelu_llm.train import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml")
                 if "accelerate_configs" not in p.parts and "experiments" not in p.parts)
PROFILES = sorted((ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))


def test_the_shipped_set_is_complete():
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPES}
    for data in ("hh", "shp"):
        for stage in ("sft", "dpo"):
            for arm in ("gelu", "crrelu", "relu"):
                assert f"gpt2-large/{data}/{stage}_{arm}.yaml" in names
    assert any(n.startswith("pythia") for n in names) and any("lora" in n for n in names)
    assert {p.stem for p in PROFILES} == {"single_gpu", "multi_gpu", "fsdp", "zero2", "zero3"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses_and_validates(path):
    command = path.stem.split("_")[0]
    assert command in ("sft", "dpo"), f"{path.name}: recipes are named sft_* or dpo_*"
    # bf16 needs a GPU to validate; everything else is checked as shipped
    crrelu_args, data_args, training_args, model_args = parse_recipe(
        command, ["--config", str(path), "--bf16", "false", "--use_cpu", "true"])
    assert model_args.model_name_or_path and data_args.dataset_name and training_args.output_dir.startswith("runs/")
    arm = path.stem.split("_")[1]
    assert crrelu_args.activation == {"gelu": None, "crrelu": "crrelu", "relu": "relu"}[arm]
    if command == "dpo" and "gpt2-large" in str(path):
        assert model_args.model_name_or_path == f"runs/gpt2-large-{path.parent.name}-sft-{arm}"
        assert crrelu_args.reference == "policy"


def test_arms_differ_only_in_the_patch():
    for data in ("hh", "shp"):
        for stage in ("sft", "dpo"):
            configs = {arm: yaml.safe_load((ROOT / f"recipes/gpt2-large/{data}/{stage}_{arm}.yaml").read_text())
                       for arm in ("gelu", "crrelu", "relu")}
            ignore = {"activation", "epsilon_init", "epsilon_learning_rate", "output_dir", "model_name_or_path"}
            strip = [{k: v for k, v in c.items() if k not in ignore} for c in configs.values()]
            assert strip[0] == strip[1] == strip[2], (data, stage)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_accelerate_profile_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    if path.stem == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if path.stem.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])
    if path.stem == "zero3":
        assert config.deepspeed_config["zero3_save_16bit_model"] is True


def test_sweep_script_runs_each_beta_once(tmp_path):
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out")}))
    done = tmp_path / "out-beta0.1"
    done.mkdir()
    (done / "final_metrics.json").write_text("{}")
    env = {**os.environ, "LAUNCH": "echo RUN"}
    result = subprocess.run(["bash", str(ROOT / "scripts/sweep_beta.sh"), str(recipe), "0.1", "0.5", "--", "--seed", "1"],
                            env=env, capture_output=True, text=True, check=True)
    assert "beta 0.1: done" in result.stdout
    assert f"RUN dpo --config {recipe} --beta 0.5 --output_dir {tmp_path}/out-beta0.5 --seed 1" in result.stdout
    assert result.stdout.count("RUN ") == 1


def test_slurm_launcher_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "scripts/launch.slurm")], check=True)


def test_dpo_under_accelerate_launch_with_two_cpu_processes(tmp_path):
    """DDP over gloo (torchrun launcher; use_cpu in the recipe): both ranks end identical."""
    rows = [{"prompt": f"{a}+{b}=", "chosen": f"{a + b}.", "rejected": f"{a + b + 1}!"} for a in range(6) for b in range(4)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(yaml.safe_dump({
        "model_name_or_path": "tiny-gpt2", "dataset_name": str(data), "output_dir": str(tmp_path / "run"),
        "max_steps": 3, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "learning_rate": 1e-3,
        "epsilon_learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no", "bf16": False, "use_cpu": True,
        "gradient_checkpointing": False, "max_length": 32, "report_to": [], "seed": 0,
    }))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "crrelu_llm.cli", "dpo", "--config", str(recipe)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    consistency = json.loads((tmp_path / "run" / "rank_consistency.json").read_text())
    assert [r["rank"] for r in consistency["ranks"]] == [0, 1]
    assert consistency["identical"] is True and consistency["distributed_type"] == "MULTI_CPU"
    eps = consistency["ranks"][0]["epsilon"]
    assert eps["epsilon/00"] != pytest.approx(0.01)
    assert eps == consistency["ranks"][1]["epsilon"]
