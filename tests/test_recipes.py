"""Every shipped recipe and accelerate profile is parsed and validated (no model is loaded)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crrelu_llm.errors import RecipeError
from crrelu_llm.training.recipes import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(
    p
    for p in (ROOT / "recipes").rglob("*.yaml")
    if "accelerate_configs" not in p.parts and "experiments" not in p.parts
)
PROFILES = sorted((ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))


def _arms(path: Path) -> list:
    return list(yaml.safe_load(path.read_text()).get("arms") or {}) or [None]


CASES = [(path, arm) for path in RECIPES for arm in _arms(path)]


def test_the_shipped_set_is_complete():
    """One SFT and one DPO recipe per model and dataset, the arms as overrides inside them."""
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPES}
    for data in ("hh", "shp"):
        for stage in ("sft", "dpo"):
            assert f"gpt2-large/{data}/{stage}.yaml" in names
            assert _arms(ROOT / f"recipes/gpt2-large/{data}/{stage}.yaml") == ["gelu", "crrelu", "relu"]
    assert not [n for n in names if n.startswith("gpt2-large") and "_" in Path(n).stem]  # no per-arm copies
    assert any(n.startswith("pythia") for n in names) and any("lora" in n for n in names)
    assert {p.stem for p in PROFILES} == {"single_gpu", "multi_gpu", "fsdp", "zero2", "zero3"}


@pytest.mark.parametrize(
    "path,arm", CASES, ids=lambda c: str(c.relative_to(ROOT / "recipes")) if isinstance(c, Path) else str(c)
)
def test_recipe_parses_and_validates(path, arm):
    command = path.stem.split("_")[0]
    assert command in ("sft", "dpo", "simpo", "orpo", "kto"), f"{path.name}: recipes are named after their command"
    # bf16 needs a GPU to validate; everything else is checked as shipped
    arm_flags = ["--arm", arm] if arm else []
    patch_args, data_args, training_args, model_args = parse_recipe(
        command, ["--config", str(path), *arm_flags, "--bf16", "false", "--use_cpu", "true"]
    )
    assert model_args.model_name_or_path and data_args.dataset_name and training_args.output_dir.startswith("runs/")
    arm = arm or path.stem.split("_")[1]
    assert patch_args.activation == {"gelu": None, "crrelu": "crrelu", "relu": "relu", "swish": "swish_beta"}[arm]
    assert "{arm}" not in training_args.output_dir + model_args.model_name_or_path
    if "gpt2-large" in str(path):
        assert training_args.output_dir == f"runs/gpt2-large-{path.parent.name}-{command}-{arm}"
    if command in ("dpo", "simpo") and "gpt2-large" in str(path):
        assert model_args.model_name_or_path == f"runs/gpt2-large-{path.parent.name}-sft-{arm}"
        assert patch_args.reference == "policy"
    if arm in ("crrelu", "swish"):
        assert training_args.activation_learning_rate == 1e-4  # the eps settings travel in the trainer's args
    if command == "simpo":
        assert (training_args.loss_type, training_args.cpo_alpha, training_args.beta) == ("simpo", 0.0, 2.0)


def test_a_recipe_with_arms_needs_one_chosen():
    path = ROOT / "recipes/gpt2-large/hh/dpo.yaml"
    with pytest.raises(RecipeError, match="defines the arms gelu, crrelu, relu: pass --arm NAME"):
        parse_recipe("dpo", ["--config", str(path)])
    with pytest.raises(RecipeError, match="has no such arm .*did you mean 'crrelu'"):
        parse_recipe("dpo", ["--config", str(path), "--arm", "crelu"])
    with pytest.raises(RecipeError, match="defines no arms"):
        parse_recipe("dpo", ["--config", str(ROOT / "recipes/pythia-410m/hh/dpo_crrelu.yaml"), "--arm", "gelu"])


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


@pytest.mark.slow  # the sweep script end to end in subprocesses: 14 s
def test_sweep_script_runs_each_beta_once(tmp_path):
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out")}))
    done = tmp_path / "out-beta0.1"
    done.mkdir()
    (done / "final_metrics.json").write_text("{}")
    # the venv's python first on PATH, as for a user who activated it
    env = {**os.environ, "LAUNCH": "echo RUN", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/sweep_beta.sh"), str(recipe), "0.1", "0.5", "--", "--seed", "1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "beta 0.1: done" in result.stdout
    assert f"RUN dpo --config {recipe} --beta 0.5 --output_dir {tmp_path}/out-beta0.5 --seed 1" in result.stdout
    assert result.stdout.count("RUN ") == 1
    shipped = ROOT / "recipes/gpt2-large/hh/dpo.yaml"  # a recipe with arms: the arm's output_dir
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/sweep_beta.sh"), str(shipped), "--arm", "relu", "0.2"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        f"RUN dpo --config {shipped} --arm relu --beta 0.2 --output_dir runs/gpt2-large-hh-dpo-relu-beta0.2"
        in result.stdout
    )


def test_slurm_launcher_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "scripts/launch.slurm")], check=True)


def test_gpu_check_is_valid_bash_names_real_files_and_refuses_cpu_unless_rehearsing(tmp_path):
    """The full CPU rehearsal (GPU_CHECK_ALLOW_CPU=1) takes minutes and is run by hand; here: the
    script parses, every script, test and profile it runs exists, and without CUDA it stops
    before doing anything."""
    script = ROOT / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for name in (
        "benchmarks/bench_activation.py",
        "benchmarks/bench_train_step.py",
        "scripts/distributed_check.py",
        "tests/test_cuda.py",
        "tests/test_activation.py",
    ):
        assert name in text and (ROOT / name).is_file(), name
    for profile in ("fsdp", "zero3"):
        assert (ROOT / "recipes" / "accelerate_configs" / f"{profile}.yaml").is_file()
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal is for CPU-only machines")
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_ALLOW_CPU"}
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=120, env={**env, "OUT": str(tmp_path / "out")}
    )
    assert result.returncode == 1 and "set GPU_CHECK_ALLOW_CPU=1 to rehearse on CPU" in result.stdout
    assert not (tmp_path / "out" / "log.txt").exists()


@pytest.mark.parametrize(
    "profile,expected,activation",
    [
        ("multi_gpu", "MULTI_CPU", "crrelu"),
        ("zero2", "DEEPSPEED", "crrelu"),
        ("zero3", "DEEPSPEED", "crrelu"),
        ("zero3", "DEEPSPEED", "swish_beta"),
    ],
)
@pytest.mark.slow
def test_sft_then_dpo_under_accelerate_launch_with_two_cpu_processes(profile, expected, activation, tmp_path):
    """scripts/distributed_check.py: SFT patches a GELU model, DPO starts from that checkpoint;
    two processes over gloo (DDP; DeepSpeed on its CPU accelerator). Both ranks end identical,
    eps trains in both runs and comes back from the saved model. ZeRO-3 builds CRReLU inside
    deepspeed.zero.Init when it loads the SFT checkpoint, where a 0-dim eps cannot be broadcast.
    Distillation runs under DDP and ZeRO-3. ZeRO-2 runs DPO alone (patching the GELU model),
    which keeps its reference-model path and saves a launch (the suite's time is near its limit):
    the SFT-to-DPO hand-off is the same code as under DDP. A Swish's beta goes through SFT and
    DPO under ZeRO-3 too: built (1,)-shaped inside zero.Init when DPO loads the SFT checkpoint."""
    if profile.startswith("zero") and sys.platform != "linux":
        pytest.skip("DeepSpeed is in the [test] extra on Linux only")
    out = tmp_path / "result.json"
    runs = ["dpo"] if profile == "zero2" else ["sft", "dpo"] if activation != "crrelu" else ["sft", "dpo", "distill"]
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "distributed_check.py"),
        "--profile",
        str(ROOT / "recipes" / "accelerate_configs" / f"{profile}.yaml"),
        "--num-processes",
        "2",
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(out),
        "--activation",
        activation,
        "--runs",
        *[r for r in runs if r != "distill"],
        *(["--distill"] if "distill" in runs else []),
    ]
    probe = os.pathsep.join([str(ROOT / "tests" / "exit_probe"), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": probe},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # each rank freed its process groups before Python exits (tests/test_exit.py), ZeRO-3's
    # models included (training.process_group.release_zero3_models)
    for run in runs:
        log = (tmp_path / "work" / f"{run}.log").read_text()
        assert sorted(re.findall(r"exit probe: rank=(\d+) gloo threads=(\d+)", log)) == [("0", "0"), ("1", "0")], run
    summary = json.loads(out.read_text())
    assert summary["passed"] is True and summary["expected_distributed_type"] == expected
    assert list(summary["runs"]) == runs
    for run in runs:
        consistency = json.loads((tmp_path / "work" / run / "rank_consistency.json").read_text())
        assert consistency["distributed_type"] == expected and [r["rank"] for r in consistency["ranks"]] == [0, 1]
        assert consistency["ranks"][0]["epsilon"] == consistency["ranks"][1]["epsilon"]
    dpo_start = json.loads((tmp_path / "work" / "dpo" / "patch_report.json").read_text())
    if "sft" not in runs:
        assert "already_patched" not in dpo_start and dpo_start["count"] == 2  # DPO made the patch
        assert dpo_start["activation"] == activation
        assert dpo_start["epsilon_init"] == (0.01 if activation == "crrelu" else None)
        return
    sft_end = json.loads((tmp_path / "work" / "sft" / "rank_consistency.json").read_text())["ranks"][0]["epsilon"]
    assert dpo_start["already_patched"] is True
    key, initial = ("epsilon/00", 0.01) if activation == "crrelu" else ("beta/00", 1.0)
    assert dpo_start["epsilon"][key] == pytest.approx(sft_end[key], rel=1e-6)
    assert sft_end[key] != pytest.approx(initial)
