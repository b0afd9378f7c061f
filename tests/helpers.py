"""Helpers shared by test modules (the folder is on sys.path through conftest.py)."""

from pathlib import Path

import yaml

from crrelu_llm.experiment import DEMO_RECIPE


def small_recipe(tmp_path: Path, arms: dict, evaluations: dict | None = None, **changes) -> Path:
    """The demo recipe made small (seconds per stage on 2 CPU cores), with the given arms."""
    recipe = yaml.safe_load(DEMO_RECIPE.read_text())
    recipe["task"].update(n_train=200, n_test=30)
    recipe["pretrain"]["config"].update(n_layer=2, n_embd=32, n_inner=64)
    recipe["pretrain"]["train"].update(max_steps=20, per_device_train_batch_size=32, save_steps=20, logging_steps=10)
    recipe["sft"].update(max_steps=4, save_steps=4, logging_steps=2)
    recipe["dpo"].update(max_steps=4, save_steps=4, logging_steps=2)
    recipe["arms"] = arms
    recipe["baseline_arm"] = next(iter(arms))
    recipe["evaluations"] = evaluations if evaluations is not None else {
        "drift": {"max_samples": 10}, "rewards": {"max_samples": 20, "max_length": 32}}
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
