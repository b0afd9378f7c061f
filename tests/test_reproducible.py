"""The same experiment gives the same bytes on another (simulated) machine: another MKL code
path, another ATen CPU capability, one CPU instead of two."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import small_recipe

ARMS = {"gelu": {"activation": None}, "crrelu": {"activation": "crrelu"}}


def run(recipe: Path, out: Path, cpus: str, machine: dict, reproducible: bool = True) -> None:
    env = {**os.environ, **machine, "CRRELU_LLM_REPRODUCIBLE": "1" if reproducible else "0", "HF_HUB_OFFLINE": "1"}
    for key in ("CRRELU_LLM_PINNED", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(key, None)
    if not reproducible:
        env["OMP_NUM_THREADS"] = str(len(cpus.split(",")))  # the machine's own thread count
    subprocess.run(
        [
            "taskset",
            "-c",
            cpus,
            sys.executable,
            "-m",
            "crrelu_llm.cli",
            "experiment",
            "--config",
            str(recipe),
            "--out",
            str(out),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )


def fingerprint(out: Path) -> dict:
    """Every model's weights (bytes) and every number of every result file."""
    found = {}
    for file in sorted(out.rglob("model.safetensors")):
        found[str(file.relative_to(out))] = hashlib.sha256(file.read_bytes()).hexdigest()
    for file in sorted((out).rglob("eval/*.json")):
        found[str(file.relative_to(out))] = _numbers(json.loads(file.read_text()))
    return found


def _numbers(value):
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items() if isinstance(v, (dict, list, float, int))}
    if isinstance(value, list):
        return [_numbers(v) for v in value if isinstance(v, (dict, list, float, int))]
    return value


MACHINE_B = {"MKL_CBWR": "AVX512", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2, reason="needs taskset, 2 CPUs")
def test_an_experiment_is_bit_identical_on_another_simulated_machine(tmp_path):
    recipe = small_recipe(tmp_path, ARMS, evaluations={"drift": {"max_samples": 10}})
    run(recipe, tmp_path / "a", "0,1", {})
    run(recipe, tmp_path / "b", "0", MACHINE_B)
    a, b = fingerprint(tmp_path / "a"), fingerprint(tmp_path / "b")
    models = [k for k in a if k.endswith("model.safetensors") and "checkpoint-" not in k]
    assert len(models) == 7, models  # init, original, crrelu step 0, 2 x (SFT, DPO)
    assert [k for k in a if k != k.replace(".json", "")]  # and the results
    assert a == b
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["environment"]["reproducible"]["pinned"] is True
    assert summary["environment"]["settings"]["MKL_CBWR"] == "COMPATIBLE"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2, reason="needs taskset, 2 CPUs")
def test_without_the_pin_the_simulated_machines_differ(tmp_path):
    """The control: the comparison above can fail (the original alone differs here)."""
    recipe = small_recipe(tmp_path, ARMS, evaluations={}, reproducible=False)
    import yaml

    spec = yaml.safe_load(recipe.read_text())
    spec["arms"] = {"gelu": {"activation": None}}
    spec["sft"].update(max_steps=1)
    spec["preference"].update(max_steps=1)
    recipe.write_text(yaml.safe_dump(spec))
    run(recipe, tmp_path / "a", "0,1", {}, reproducible=False)
    run(recipe, tmp_path / "b", "0", MACHINE_B, reproducible=False)
    a, b = fingerprint(tmp_path / "a"), fingerprint(tmp_path / "b")
    assert a["original/model.safetensors"] != b["original/model.safetensors"]
