"""Nothing lost, nothing stale, nothing silently wrong: each test here failed on the code before
its fix (issue 15). Bad input gets one line and exit status 2, and nothing is written."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crrelu_llm.cli import main as cli_main

from helpers import recipe, reduced_demo


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- 1: another run's records


def test_a_different_run_is_refused_before_anything_is_written(tmp_path, pairs_file, capsys):
    first = recipe(tmp_path, pairs_file, max_steps=2, save_steps=2).rename(tmp_path / "first.yaml")
    assert cli_main(["dpo", "--config", str(first)]) == 0
    run_dir = tmp_path / "run"
    before = _snapshot(run_dir)
    other = recipe(tmp_path, pairs_file, max_steps=2, save_steps=2, model_name_or_path="tiny-llama").rename(
        tmp_path / "other.yaml"
    )
    assert cli_main(["dpo", "--config", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds a different run (model_name_or_path 'tiny-gpt2' -> 'tiny-llama')" in err
    assert "--overwrite_output_dir true" in err and "another --output_dir" in err
    assert _snapshot(run_dir) == before  # not one file rewritten
    # the same run again resumes (nothing to refuse); asked for, the other run replaces it
    assert cli_main(["dpo", "--config", str(first)]) == 0
    assert cli_main(["dpo", "--config", str(other), "--overwrite_output_dir", "true"]) == 0
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["model_name_or_path"] == "tiny-llama"


# --------------------------------------------------------------------------- 2: stale stages


@pytest.mark.slow
def test_an_edited_recipe_is_refused_naming_the_change_then_rerun_when_asked(demo_run, tmp_path, capsys):
    tmp, out = demo_run
    work = tmp_path / "out"
    shutil.copytree(out, work)
    recipe_ = yaml.safe_load(reduced_demo(tmp, capability=True).read_text())
    recipe_["arms"]["crrelu"]["activation_learning_rate"] = 0.05
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(recipe_))
    before = _snapshot(work)
    assert cli_main(["experiment", "--config", str(edited), "--out", str(work)]) == 2
    err = capsys.readouterr().err
    assert "crrelu/sft (activation_learning_rate: 0.01 -> 0.05)" in err and "--rerun-changed" in err, err
    assert _snapshot(work) == before
    assert cli_main(["experiment", "--config", str(edited), "--out", str(work), "--rerun-changed"]) == 0
    summary = json.loads((work / "summary.json").read_text())
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status["crrelu/sft"] == "reran" and status["crrelu/dpo beta=0.5 seed=0"] == "reran"
    recomputed = ("ran", "reran")  # ran: its file went with the recomputed run directory
    assert status["crrelu/rewards beta=0.5 seed=0"] in recomputed  # downstream of the change
    assert status["gelu/sft"] == "skipped" and status["relu/dpo beta=0.5 seed=0"] == "skipped"
    assert status["gelu/winrate dpo-beta0.5-seed0 vs gelu/sft"] == "skipped"
    assert status["crrelu/winrate dpo-beta0.5-seed0 vs gelu/dpo-beta0.5-seed0"] in recomputed
    sft = yaml.safe_load((work / "crrelu" / "sft" / "recipe.yaml").read_text())
    assert sft["activation_learning_rate"] == 0.05
    # and now it is current: a third run skips everything
    assert cli_main(["experiment", "--config", str(edited), "--out", str(work)]) == 0
    summary = json.loads((work / "summary.json").read_text())
    assert all(s["status"] == "skipped" for s in summary["stages"])


def test_generations_of_a_model_retrained_in_place_are_not_reused(tmp_path):
    from crrelu_llm.evaluation.evaluate import weights_stamp
    from crrelu_llm.patching.tiny import tiny_causal_lm

    model_dir = tmp_path / "m"
    tiny_causal_lm("gpt2").save_pretrained(model_dir)
    first = weights_stamp(model_dir)
    time.sleep(0.01)
    tiny_causal_lm("gpt2", seed=1).save_pretrained(model_dir)
    assert first and weights_stamp(model_dir) != first and weights_stamp("tiny-gpt2") is None


# --------------------------------------------------------------------------- 5: value ranges


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"beta": -0.1}, "beta must be > 0, got -0.1 (beta <= 0 inverts or removes the DPO objective)"),
        ({"beta": 0.0}, "beta must be > 0"),
        ({"learning_rate": -1e-3}, "learning_rate must be >= 0"),
        ({"epsilon_learning_rate": -1.0}, "activation_learning_rate must be >= 0"),
        ({"max_length": 0}, "max_length must be > 0"),
        ({"lora_dropout": 1.5}, "lora_dropout must be in [0, 1]"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be > 0"),
        ({"shp_min_score_ratio": 0.5}, "shp_min_score_ratio must be >= 1"),
        ({"eval_fraction": 1.5}, "eval_fraction must be in (0, 1), got 1.5"),
    ],
)
def test_out_of_range_values_are_refused_before_loading(tmp_path, pairs_file, bad, message, capsys):
    path = recipe(tmp_path, pairs_file, model_name_or_path=str(tmp_path / "no-such-model"), **bad)
    assert cli_main(["dpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "no-such-model" not in err  # refused before the model was looked for
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 6, 13: directories


def test_read_only_output_directories_get_one_line(tmp_path, pairs_file, capsys):
    if os.geteuid() == 0:
        # root writes through permission bits: make the parent a file instead, which nobody can write into
        blocked = tmp_path / "blocked"
        blocked.write_text("not a directory")
        target = blocked / "out"
    else:
        blocked = tmp_path / "ro"
        blocked.mkdir()
        blocked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        target = blocked / "out"
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "chosen": f"{i + 1}.", "rejected": "0!"}) + "\n" for i in range(10))
    )
    run = tmp_path / "run0"
    (run / "eval").mkdir(parents=True)
    (run / "final_metrics.json").write_text('{"eval_rewards/accuracies": 0.5}')
    commands = [
        ["patch", "tiny-gpt2", "--out", str(target)],
        ["eval", "drift", "--model", "tiny-gpt2", "--original", "tiny-gpt2", "--data", str(data), "--out", str(target)],
        ["compare", str(run), "--out", str(target)],
        ["dpo", "--config", str(recipe(tmp_path, pairs_file, output_dir=str(target)))],
        ["demo", "--out", str(target)],
    ]
    for argv in commands:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        command = " ".join(argv[:2]) if argv[0] == "eval" else argv[0]
        assert err[-1].startswith(f"crrelu-llm {command}: error: cannot write to") and "Traceback" not in "".join(err)


def test_patched_checkpoints_get_the_users_umask_and_a_tokenizer(tmp_path):
    old = os.umask(0o022)
    try:
        assert cli_main(["patch", "tiny-gpt2", "--out", str(tmp_path / "p")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o755
    assert (tmp_path / "p" / "tokenizer_config.json").exists()  # tiny models save their tokenizer too
    from crrelu_llm.patching.loading import load_tokenizer

    assert len(load_tokenizer(str(tmp_path / "p"))) == len(load_tokenizer("tiny-gpt2"))


# --------------------------------------------------------------------------- 6: judges


def test_judge_specs_and_unloadable_judges_get_one_line(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "chosen": f"{i + 1}.", "rejected": "0!"}) + "\n" for i in range(10))
    )
    base = [
        "eval",
        "winrate",
        "--model",
        "tiny-gpt2",
        "--baseline",
        "tiny-gpt2",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "e"),
    ]
    assert cli_main([*base, "--judge", "openai:gpt-4o"]) == 2
    assert "the base URL is missing; write openai:gpt-4o@<base url>" in capsys.readouterr().err
    assert cli_main([*base, "--judge", f"reward-model:{tmp_path / 'no-rm'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "reward-model judge" in err[-1] and "could not be loaded" in err[-1]


# --------------------------------------------------------------------------- 8: CPU default


def test_a_recipe_without_bf16_trains_in_fp32_on_a_cpu_only_machine(tmp_path, pairs_file, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    config = yaml.safe_load(recipe(tmp_path, pairs_file).read_text())
    del config["bf16"], config["use_cpu"]
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(config))
    from crrelu_llm.errors import RecipeError
    from crrelu_llm.training.recipes import parse_recipe

    caplog.set_level("WARNING", logger="crrelu_llm")
    training_args = parse_recipe("dpo", ["--config", str(path)])[2]
    assert training_args.bf16 is False and "training in float32 on the CPU" in caplog.text
    with pytest.raises(RecipeError, match="bf16"):  # asked for explicitly, it still errors
        parse_recipe("dpo", ["--config", str(path), "--bf16", "true"])


# --------------------------------------------------------------------------- 6: Ctrl-C


@pytest.mark.slow
def test_ctrl_c_says_where_the_last_checkpoint_is(tmp_path, pairs_file):
    path = recipe(tmp_path, pairs_file, max_steps=400, save_steps=2)
    run_dir = tmp_path / "run"
    # a suite started in the background of a non-interactive shell inherits SIGINT ignored, and a
    # Python started with SIGINT ignored never turns it into KeyboardInterrupt: restore the default
    proc = subprocess.Popen(
        [sys.executable, "-m", "crrelu_llm.cli", "dpo", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not list(run_dir.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    # the progress bar may redraw after it, so find the line rather than take the last one
    last = next(line for line in err.split("\n") if line.startswith("crrelu-llm dpo:"))
    assert last.startswith("crrelu-llm dpo: interrupted: the last checkpoint is ") and str(run_dir) in last
    assert "rerunning the same command resumes from it" in last and "Traceback" not in err


# --------------------------------------------------------------------------- 14: CPU threads


def test_cpu_threads_follow_the_affinity_and_busy_cpus_are_named(monkeypatch, caplog):
    import torch

    from crrelu_llm import runtime

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    import psutil

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (1.9, 1.0, 1.0))  # a job that has just ended
    usage = {"now": [5.0, 100.0]}  # CPU 0 (ours) idle, CPU 1 (not ours) busy
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval, percpu: usage["now"])
    caplog.set_level("WARNING", logger="crrelu_llm")
    try:
        assert runtime.set_cpu_threads() == 1 and torch.get_num_threads() == 1
        assert "busy" not in caplog.text  # neither the load average nor another CPU counts
        usage["now"] = [95.0, 0.0]
        assert runtime.set_cpu_threads() == 1
        assert "the CPUs are busy (0.9 of 1 in use by other processes)" in caplog.text
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
        assert runtime.set_cpu_threads() == torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- 9: sample sizes


def test_every_printed_metric_carries_n_and_wide_intervals_are_warned(tmp_path, capsys, caplog):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "chosen": f"{i + 1}.", "rejected": "0!"}) + "\n" for i in range(40))
    )
    caplog.set_level("WARNING", logger="crrelu_llm")
    common = ["--data", str(data), "--split", "train", "--out", str(tmp_path / "e")]
    assert (
        cli_main(
            [
                "eval",
                "winrate",
                "--model",
                "tiny-gpt2",
                "--baseline",
                "tiny-llama",
                "--judge",
                "rule:arithmetic",
                "--num-prompts",
                "10",
                "--max-new-tokens",
                "2",
                *common,
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "eval",
                "rewards",
                "--model",
                "tiny-gpt2",
                "--reference",
                "tiny-gpt2",
                "--max-samples",
                "10",
                "--max-length",
                "16",
                *common,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "W/T/L of n=10" in out and "(n=10 pairs" in out
    assert "win rate: the 95% interval is +-" in caplog.text and "with n=10 prompts, too wide" in caplog.text


def test_a_range_error_on_the_command_line_is_named_before_other_recipe_errors(tmp_path, pairs_file, capsys):
    """bf16 on a CPU-only machine used to hide a negative --beta."""
    path = recipe(tmp_path, pairs_file, bf16=True)
    del_cpu = yaml.safe_load(path.read_text())
    del del_cpu["use_cpu"]
    path.write_text(yaml.safe_dump(del_cpu))
    assert cli_main(["dpo", "--config", str(path), "--beta", "-1"]) == 2
    assert "beta must be > 0, got -1 " in capsys.readouterr().err
