"""Stages run at once (submitit's local executor) or as Slurm jobs: same results as in turn,
dependencies respected, a failure stops only what depends on it, a rerun submits only it."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from crrelu_llm.cli import main as cli_main
from crrelu_llm.experiments.experiment import DEMO_RECIPE
from crrelu_llm.experiments.stage_actions import launcher_command
from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer

import slurm_cluster

RUNS = ("crrelu/dpo-beta0.5-seed0", "crrelu/dpo-beta0.5-seed1")


def grid_recipe(tmp_path: Path, slurm: dict | None = None, evaluations: dict | None = None) -> Path:
    """One CRReLU arm, two DPO seeds sharing one reference, no SFT: three stages (data, 2 x DPO),
    and the ``evaluations`` of each DPO run."""
    model = tmp_path / "original"
    tiny_causal_lm(
        "gpt2", seed=0, n_layer=2, n_embd=32, n_head=2, n_inner=64, n_positions=64, vocab_size=128
    ).save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    recipe = yaml.safe_load(DEMO_RECIPE.read_text())
    for key in ("pretrain", "sft"):
        del recipe[key]
    recipe.update(
        original=str(model),
        arms={"crrelu": {"activation": "crrelu", "epsilon_learning_rate": 1e-2}},
        baseline_arm="crrelu",
        seeds=[0, 1],
        evaluations=evaluations or {},
    )
    recipe["task"].update(n_train=200, n_test=20)
    recipe["preference"].update(max_steps=8, save_steps=4, logging_steps=2, per_device_train_batch_size=8)
    if slurm:
        recipe["slurm"] = slurm
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def stage_log(out: Path) -> dict:
    return {entry["stage"]: entry for entry in json.loads((out / "summary.json").read_text())["stages"]}


def run(recipe: Path, out: Path, *flags) -> int:
    return cli_main(["experiment", "--config", str(recipe), "--out", str(out), *flags])


@pytest.mark.slow
def test_two_dpo_runs_at_once_give_what_they_give_in_turn(tmp_path):
    recipe = grid_recipe(tmp_path, evaluations={"rewards": {"betas": [0.5], "max_samples": 20, "max_length": 32}})
    assert run(recipe, tmp_path / "in_turn") == 0
    assert run(recipe, tmp_path / "at_once", "--executor", "local", "--parallel", "2") == 0
    log = stage_log(tmp_path / "at_once")
    first, second = (log[f"crrelu/dpo beta=0.5 seed={seed}"] for seed in (0, 1))
    # their jobs ran at once (a stage's own time starts after its job's imports, seconds that
    # differ from job to job on a busy machine: two short stages need not overlap themselves)
    assert all(run["job_started"] <= run["started"] for run in (first, second))
    assert max(first["job_started"], second["job_started"]) < min(first["ended"], second["ended"]), (
        "they did not overlap"
    )
    assert log["data"]["ended"] <= min(first["started"], second["started"]), "DPO started before its data existed"
    for run_dir in RUNS:
        a, b = (
            json.loads((tmp_path / where / run_dir / "final_metrics.json").read_text())
            for where in ("in_turn", "at_once")
        )
        assert "eval_rewards/accuracies" in a and "eval_loss" in b
        for key, value in a.items():
            if isinstance(value, float) and not any(word in key for word in ("runtime", "per_second", "flos")):
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (run_dir, key)
        ra, rb = (
            json.loads((tmp_path / where / run_dir / "eval" / "rewards.json").read_text())
            for where in ("in_turn", "at_once")
        )
        assert rb["n"] == ra["n"] == 20
        assert (
            log[f"crrelu/rewards beta=0.5 seed={run_dir[-1]}"]["started"]
            >= log[f"crrelu/dpo beta=0.5 seed={run_dir[-1]}"]["ended"]
        ), "an evaluation started before its model existed"
        wa, wb = (load_file(tmp_path / where / run_dir / "model.safetensors") for where in ("in_turn", "at_once"))
        for name, tensor in wa.items():
            torch.testing.assert_close(wb[name], tensor, rtol=1e-4, atol=1e-6)
    # the two runs share one reference: one computed its log-probabilities, the other waited and reused them
    logs = "".join(path.read_text() for path in (tmp_path / "at_once" / "jobs").rglob("*_log.err"))
    assert logs.count("reference log-probabilities for train: computing") == 1
    assert logs.count("reference log-probabilities for train: reusing") == 1


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = slurm_cluster.unavailable()
    if why:
        pytest.skip(why)
    daemons = slurm_cluster.start(tmp_path_factory.mktemp("slurm-state"))
    yield
    slurm_cluster.stop(daemons)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_a_failed_stage_stops_alone_and_a_rerun_submits_only_it(tmp_path, executor, request, capsys):
    """With ``slurm`` the stages are sbatch jobs on a real single-node Slurm (skipped where it
    cannot start); with ``local``, subprocesses of submitit's local executor."""
    if executor == "slurm":
        request.getfixturevalue("slurm")
    recipe = grid_recipe(tmp_path, slurm={"cpus_per_task": 1, "time": 30} if executor == "slurm" else None)
    flags = ["--executor", executor] + (["--parallel", "2"] if executor == "local" else [])
    out = tmp_path / "out"
    blocker = out / RUNS[1]
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the run's directory goes")
    assert run(recipe, out, *flags) == 2
    error = capsys.readouterr().err
    assert "1 stage(s) did not finish: crrelu/dpo beta=0.5 seed=1" in error, error
    assert (out / RUNS[0] / "final_metrics.json").exists()
    assert not (out / "summary.json").exists()

    blocker.unlink()
    assert run(recipe, out, *flags) == 0
    log = stage_log(out)
    assert {name: entry["status"] for name, entry in log.items()} == {
        "data": "skipped",
        "crrelu/dpo beta=0.5 seed=0": "skipped",
        "crrelu/dpo beta=0.5 seed=1": "ran",
    }
    assert (out / RUNS[1] / "final_metrics.json").exists()
    if executor == "slurm":
        submitted = json.loads((out / "jobs" / "submitted.json").read_text())
        assert list(submitted) == ["crrelu/dpo beta=0.5 seed=1"]


def test_accelerate_launch_gets_the_gpu_count_of_its_stage(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert launcher_command("accelerate launch --config_file multi_gpu.yaml") == [
        "accelerate",
        "launch",
        "--num_processes",
        "2",
        "--config_file",
        "multi_gpu.yaml",
    ]
    command = launcher_command("python -m accelerate.commands.launch --mixed_precision no")
    assert command[3:5] == ["--num_processes", "2"]
    assert launcher_command("accelerate launch --num_processes 1") == ["accelerate", "launch", "--num_processes", "1"]
    assert launcher_command("torchrun --nproc-per-node 2") == ["torchrun", "--nproc-per-node", "2"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launcher_command("accelerate launch") == ["accelerate", "launch"]


@pytest.mark.parametrize(
    "flags, recipe_change, message",
    [
        (["--executor", "inline", "--parallel", "2"], {}, "--parallel needs --executor local"),
        (["--gpus-per-run", "1"], {}, "--gpus-per-run 1: this node shows 0 GPU(s)"),
        (["--executor", "local", "--parallel", "0"], {}, "--parallel 0: give a positive number"),
        (["--executor", "slurm", "--parallel", "2"], {}, "--parallel is for --executor local"),
        ([], {"slurm": {"partion": "gpu"}}, "slurm has unknown key 'partion'"),
        ([], {"slurm": {"time": "4h"}}, "slurm.time is the time limit of one stage in minutes"),
    ],
)
def test_bad_executor_settings_are_one_line_errors_before_anything_is_written(
    tmp_path, capsys, monkeypatch, flags, recipe_change, message
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    recipe = grid_recipe(tmp_path)
    raw = yaml.safe_load(recipe.read_text())
    raw.update(recipe_change)
    recipe.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert run(recipe, tmp_path / "out", *flags) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_each_local_stage_gets_its_own_gpu_set_and_waits_for_what_it_reads(tmp_path, monkeypatch):
    """Four stages on a node showing GPUs 4-7, two per stage: two at a time, on disjoint sets
    (the indices the node's CUDA_VISIBLE_DEVICES names), and `last` only after `first`.

    That two ran at once is shown by a rendezvous, not by comparing time windows: on two busy
    cores one job's imports can outlast another job's whole run. Each stage marks itself running
    and waits (up to 30 s) until it sees another stage running or every other stage finished; a
    scheduler that ran them one at a time makes every stage wait the 30 s and the test fail."""
    from functools import partial

    from crrelu_llm.experiments.executors import ExecutorSettings, Stage, local_slots, run_stages

    def record_gpus(folder: str, name: str, others: list) -> None:  # nested: pickled by value into the job
        import json
        import os
        import time
        from pathlib import Path

        folder, start = Path(folder), time.time()
        running = folder / "running"
        running.mkdir(exist_ok=True)
        (running / name).touch()
        met = set()
        while time.time() < start + 30:
            met = {p.name for p in running.iterdir()} - {name}
            if met or all((folder / f"{other}.json").exists() for other in others):
                break
            time.sleep(0.05)
        time.sleep(1.0)  # stay visible to the stage that found this one
        output = {"gpus": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time(), "met": sorted(met)}
        (folder / f"{name}.json").write_text(json.dumps(output))
        (running / name).unlink()

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    settings = ExecutorSettings(kind="local", gpus_per_run=2)
    assert local_slots(settings) == [(4, 5), (6, 7)]
    names = ["first", "second", "third", "last"]
    stages = [
        Stage(
            name,
            tmp_path / f"{name}.json",
            partial(record_gpus, str(tmp_path), name, [other for other in names if other != name]),
            after=["first"] if name == "last" else [],
        )
        for name in names
    ]
    finished = []
    run_stages(stages, lambda stage, timing: finished.append(stage.name), settings, tmp_path / "jobs")
    seen = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in names}
    assert sorted(finished) == sorted(names)
    assert {s["gpus"] for s in seen.values()} == {"4,5", "6,7"}
    for a in names:
        for b in names:
            overlap = a < b and seen[a]["start"] < seen[b]["end"] and seen[b]["start"] < seen[a]["end"]
            assert not (overlap and seen[a]["gpus"] == seen[b]["gpus"]), f"{a} and {b} shared GPUs {seen[a]['gpus']}"
            assert not (b in seen[a]["met"] and seen[a]["gpus"] == seen[b]["gpus"]), f"{a} ran beside {b} on its GPUs"
    assert seen["last"]["start"] >= seen["first"]["end"]
    assert "first" not in seen["last"]["met"]
    assert any(s["met"] for s in seen.values()), "no two stages ran at once"
