"""The grid at scale: reference log-probabilities shared across runs, the plan, stage wall times."""

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from crrelu_llm.training.recipes import parse_recipe
from crrelu_llm.training.train import run

from helpers import recipe


def _dpo(folder, pairs_file, **keys):
    folder.mkdir()
    metrics = run("dpo", *parse_recipe("dpo", ["--config", str(recipe(folder, pairs_file, **keys))]))
    return metrics, AutoModelForCausalLM.from_pretrained(folder / "run")


def test_reference_log_probs_are_computed_once_per_reference_and_change_with_their_key(tmp_path, pairs_file, caplog):
    caplog.set_level(logging.INFO, logger="crrelu_llm.reference_cache")
    cache = tmp_path / "ref_logps"
    shared = {"precompute_ref_log_probs": True, "ref_logps_cache_dir": str(cache)}
    _dpo(tmp_path / "b01", pairs_file, beta=0.1, **shared)
    first = sorted(p.name for p in cache.glob("*.parquet"))
    assert len(first) == 2 and "reusing" not in caplog.text  # train and eval, computed
    caplog.clear()
    cached_metrics, cached = _dpo(tmp_path / "b05", pairs_file, beta=0.5, **shared)
    assert caplog.text.count("reusing") == 2 and sorted(p.name for p in cache.glob("*.parquet")) == first
    # the same run without any precomputation: same losses, same weights
    plain_metrics, plain = _dpo(tmp_path / "plain", pairs_file, beta=0.5)
    assert cached_metrics["train_loss"] == pytest.approx(plain_metrics["train_loss"], rel=1e-5)
    for (name, a), (_, b) in zip(cached.state_dict().items(), plain.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
    caplog.clear()
    _dpo(tmp_path / "short", pairs_file, beta=0.5, max_length=16, **shared)  # other truncation: another key
    assert "reusing" not in caplog.text and len(list(cache.glob("*.parquet"))) == 4


def test_a_cache_without_precomputation_is_refused(tmp_path, pairs_file):
    from crrelu_llm.errors import RecipeError

    with pytest.raises(RecipeError, match="set precompute_ref_log_probs: true"):
        parse_recipe("dpo", ["--config", str(recipe(tmp_path, pairs_file, ref_logps_cache_dir=str(tmp_path)))])


def test_the_plan_lists_every_stage_with_its_estimate_and_writes_nothing(tmp_path, capsys):
    import yaml

    from crrelu_llm.cli import main as cli_main
    from crrelu_llm.experiments.experiment import load_experiment
    from crrelu_llm.experiments.plan import parameter_count, plan

    from helpers import reduced_demo

    recipe = yaml.safe_load(reduced_demo(tmp_path).read_text())
    recipe["betas"], recipe["seeds"] = [0.1, 0.5], [0, 1]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(recipe))
    exp = load_experiment(path, str(tmp_path / "out"))
    result = plan(exp, gpus=1, gpu_tflops=100, utilisation=0.5)
    stages = {r["stage"]: r for r in result["stages"]}
    assert len([s for s in stages if "/dpo beta=" in s and s.endswith(("seed=0", "seed=1"))]) == 12  # 3 arms x 2 x 2
    n = parameter_count(None, recipe["pretrain"])
    assert result["parameters"] == n
    sft = recipe["sft"]
    tokens = sft["max_steps"] * sft["per_device_train_batch_size"] * sft["max_length"]
    assert stages["crrelu/sft"]["flops"] == 6 * n * tokens and stages["crrelu/sft"]["after"] == ["original", "data"]
    first, later = stages["crrelu/dpo beta=0.1 seed=0"], stages["crrelu/dpo beta=0.5 seed=1"]
    assert first["after"] == ["crrelu/sft", "data"]
    assert later["flops"] < first["flops"] and "from the cache" in later["basis"]  # the reference, once per arm
    assert result["total_gpu_hours"] == pytest.approx(result["total_flops"] / (100e12 * 0.5) / 3600)
    assert not (tmp_path / "out").exists()
    assert cli_main(["experiment", "--config", str(path), "--out", str(tmp_path / "out"), "--plan"]) == 0
    printed = capsys.readouterr().out
    assert "crrelu/dpo beta=0.5 seed=1" in printed and "GPU-hours at 989 TFLOP/s x 40% utilisation" in printed
    assert not (tmp_path / "out").exists()
    assert cli_main(["experiment", "--config", str(path), "--plan", "--utilisation", "0"]) == 2
    assert "--utilisation in (0, 1]" in capsys.readouterr().err


def test_the_plan_says_in_one_line_why_it_cannot_count_parameters(tmp_path, capsys, monkeypatch):
    """Offline, a hub model's config cannot be read: the plan names the model and the fix
    instead of leaving every stage 'unknown' without a reason."""
    import yaml

    from crrelu_llm.cli import main as cli_main

    from helpers import reduced_demo

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = yaml.safe_load(reduced_demo(tmp_path).read_text())
    recipe.pop("pretrain", None)
    recipe["original"] = "no-such-org/no-such-model"
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli_main(["experiment", "--config", str(path), "--out", str(tmp_path / "out"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert (
        "parameter count unknown: the config of no-such-org/no-such-model could not be read here "
        "(not a local directory, not in the Hub cache, offline (HF_HUB_OFFLINE))"
    ) in out
    assert "point the recipe's original at a local model directory" in out
