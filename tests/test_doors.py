"""The doors a user walks through besides the command line: the Python route's reference, the
trackers a recipe names, kernels across arms, the Hub push and its card, the docs' code."""

import ast
import doctest
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from crrelu_llm.errors import RecipeError

from helpers import run_examples

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line, code) of each ```python block of a markdown page."""
    text = page.read_text()
    return [
        (text[: m.start()].count("\n") + 2, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    ]


def test_every_python_block_in_readme_and_docs_runs_or_its_imports_resolve(tmp_path, monkeypatch):
    """A ``>>>`` block runs as a doctest; any other block's imports resolve (module and name)."""
    monkeypatch.chdir(tmp_path)  # what the examples write goes there
    ran = checked = 0
    for page in PAGES:
        for line, code in python_blocks(page):
            where = f"{page.relative_to(ROOT)}:{line}"
            if ">>>" in code:
                ran += run_examples([doctest.DocTestParser().get_doctest(code, {}, where, where, line)])
                continue
            for node in ast.walk(ast.parse("\n".join(c for c in code.splitlines() if not c.startswith("$")))):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        importlib.import_module(alias.name)
                        checked += 1
                elif isinstance(node, ast.ImportFrom):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                            f"{where}: `from {node.module} import {alias.name}` does not resolve"
                        )
                        checked += 1
    assert ran >= 8 and checked >= 5  # the Python route's example ran, and the other blocks were read


# ------------------------------------------------------------------ one reference rule


def _pairs():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": f"{a}+1=", "chosen": f"{a + 1}.", "rejected": f"{a + 2}."} for a in range(4)])


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_a_trainer_without_ref_model_takes_the_patched_policy_as_its_reference(tmp_path, objective):
    """TRL alone would load ``config._name_or_path`` again: the unpatched original (here a tiny
    GELU model saved to disk, so the old code loads it without error, and its MLPs are GELU)."""
    from crrelu_llm import activation_parameters, patch_model
    from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer
    from crrelu_llm.training.objectives import OBJECTIVES, unpaired

    original = tiny_causal_lm("gpt2")
    original.save_pretrained(tmp_path / "original")
    model = type(original).from_pretrained(tmp_path / "original")
    patch_model(model, "crrelu", epsilon_init=0.03)
    config = OBJECTIVES[objective].config(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True
    )
    data = _pairs() if objective == "dpo" else unpaired(_pairs())
    trainer = OBJECTIVES[objective].trainer(
        model=model, args=config, train_dataset=data, processing_class=tiny_tokenizer()
    )
    ref = trainer.ref_model
    assert ref is not None and ref is not trainer.model
    acts = [type(b.mlp.act).__name__ for b in ref.transformer.h]
    assert acts == [type(b.mlp.act).__name__ for b in trainer.model.transformer.h] == ["CRReLU"] * len(acts)
    assert {k: v.item() for k, v in activation_parameters(ref).items()} == {
        k: v.item() for k, v in activation_parameters(trainer.model).items()
    }
    for (name, p), (_, q) in zip(trainer.model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(p, q), name
    assert not any(p.requires_grad for p in ref.parameters())


def test_the_unpatched_original_is_the_reference_only_when_asked_for_by_name(tmp_path):
    from crrelu_llm import patch_model
    from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer
    from crrelu_llm.training.trainers.dpo import CRReLUDPOConfig, CRReLUDPOTrainer

    tiny_causal_lm("gpt2").save_pretrained(tmp_path / "original")
    model = tiny_causal_lm("gpt2")
    patch_model(model, "crrelu")
    args = CRReLUDPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, report_to=[], use_cpu=True, bf16=False)
    trainer = CRReLUDPOTrainer(
        model=model,
        ref_model=str(tmp_path / "original"),
        args=args,
        train_dataset=_pairs(),
        processing_class=tiny_tokenizer(),
    )
    assert type(trainer.ref_model.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"


# ------------------------------------------------------------------ trackers


def test_a_recipe_naming_a_tracker_not_installed_stops_in_one_line_naming_the_extra(monkeypatch):
    import transformers.integrations

    from crrelu_llm.training.recipes import recipe_from_dict

    monkeypatch.setattr(transformers.integrations, "get_available_reporting_integrations", lambda: ["tensorboard"])
    keys = {"model_name_or_path": "tiny-gpt2", "dataset_name": "x.jsonl", "output_dir": "o", "report_to": ["wandb"]}
    with pytest.raises(RecipeError, match="report_to: wandb is not installed: pip install") as refused:
        recipe_from_dict("sft", keys, source="r.yaml")
    assert 'pip install "crrelu-llm[wandb]"' in str(refused.value)
    with pytest.raises(RecipeError, match=r"'tensorbord' is not a tracker .*did you mean 'tensorboard'"):
        recipe_from_dict("sft", {**keys, "report_to": ["tensorbord"]}, source="r.yaml")
    recipe_from_dict("sft", {**keys, "report_to": ["tensorboard"]}, source="r.yaml")  # installed: accepted


def test_every_shipped_recipe_names_only_trackers_the_set_up_installs():
    """What the README installs runs every shipped recipe: their trackers are core dependencies."""
    import tomllib
    import yaml

    from crrelu_llm.trackers import tracker_names

    core = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    named = set()
    for recipe in [*ROOT.glob("recipes/**/*.yaml"), ROOT / "crrelu_llm" / "demo.yaml"]:
        for match in re.finditer(r"report_to:\s*(\[[^\]]*\]|\S+)", recipe.read_text()):
            named.update(tracker_names(yaml.safe_load(match.group(1))))
    assert "tensorboard" in named
    for tracker in named:
        assert re.search(rf"(^| ){tracker}[>=<]", core), (
            f"{tracker} is named by a recipe but not installed with crrelu-llm"
        )


@pytest.mark.slow
def test_sft_with_report_to_tensorboard_writes_event_files_with_the_activation_parameters(tmp_path, pairs_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from crrelu_llm.cli import main

    out = tmp_path / "sft"
    argv = ["sft", "--model_name_or_path", "tiny-gpt2", "--dataset_name", str(pairs_file), "--output_dir", str(out)]
    argv += ["--max_steps", "2", "--logging_steps", "1", "--report_to", "tensorboard", "--use_cpu", "true"]
    argv += ["--per_device_train_batch_size", "2"]
    assert main(argv) == 0
    events = list(out.rglob("events.out.tfevents.*"))  # transformers' place: output_dir/runs/<date>_<host>
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/epsilon/mean", "train/epsilon/min", "train/epsilon/max", "train/epsilon/00"} <= tags
    assert {e.step for e in accumulator.Scalars("train/epsilon/mean")} == {1, 2}  # every logging step


# ------------------------------------------------------------------ kernels across arms


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("option", ["use_liger_kernel", "use_kernels"])
def test_kernel_options_apply_to_every_arm_alike_or_the_recipe_is_refused(tmp_path, option):
    from crrelu_llm.training.recipes import parse_recipe

    base = "model_name_or_path: tiny-gpt2\ndataset_name: x.jsonl\noutput_dir: o/{arm}\n"
    arms = "arms:\n  gelu: {activation: null}\n  crrelu: {activation: crrelu}\n"
    # use_kernels reaches from_pretrained through TRL's model_init_kwargs
    on = f"{option}: true" if option == "use_liger_kernel" else "model_init_kwargs: {use_kernels: true}"
    flag = (
        ["--use_liger_kernel", "true"]
        if option == "use_liger_kernel"
        else ["--model_init_kwargs", '{"use_kernels": true}']
    )
    # on for every arm: the GELU arm's run is refused too (the crrelu arm could not run it)
    recipe = _write(tmp_path, base + on + "\n" + arms)
    bypassed = "swaps MLP layers for kernels that never call the activation module, so the patched activation"
    with pytest.raises(RecipeError, match=f"{option}: true {bypassed} of arm crrelu would be silently bypassed"):
        parse_recipe("sft", ["--config", recipe, "--arm", "gelu"])
    # on for the baseline arm only: the arms would differ in kernels
    recipe = _write(tmp_path, base + f"arms:\n  gelu: {{activation: null, {on}}}\n  crrelu: {{}}\n")
    with pytest.raises(RecipeError, match=f"{option} is set for the arm.s. gelu only: .*every arm alike"):
        parse_recipe("sft", ["--config", recipe, "--arm", "crrelu"])
    # as a flag on one arm's run: the same
    recipe = _write(tmp_path, base + arms)
    with pytest.raises(RecipeError, match=f"{option}"):
        parse_recipe("sft", ["--config", recipe, "--arm", "gelu", *flag])
    # off everywhere: accepted
    assert parse_recipe("sft", ["--config", recipe, "--arm", "gelu"])[0].activation is None


def test_an_experiment_whose_arms_differ_in_kernels_is_refused_before_its_first_stage(tmp_path):
    import yaml

    from crrelu_llm.errors import CRReLULLMError
    from crrelu_llm.experiments.experiment import load_experiment

    from helpers import small_recipe

    path = small_recipe(tmp_path, {"gelu": {"activation": None, "use_liger_kernel": True}, "crrelu": {}})
    with pytest.raises(CRReLULLMError, match="use_liger_kernel is set for the arm.s. gelu only"):
        load_experiment(path)
    recipe = yaml.safe_load(path.read_text())
    recipe["arms"] = {"gelu": {"activation": None}, "crrelu": {}}
    recipe["preference"]["report_to"] = "clearml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(CRReLULLMError, match="report_to: clearml is not installed: pip install clearml"):
        load_experiment(path)


# ------------------------------------------------------------------ the Hub gets what the folder holds


class FakeHub:
    """transformers' ``hf_api()``: the repository made, and what each upload would send, read
    from the folder at the moment of the upload."""

    def __init__(self):
        self.uploads = []

    def __call__(self):
        return self

    def create_repo(self, repo_id, **kwargs):
        return type("RepoUrl", (), {"repo_id": repo_id if "/" in repo_id else f"user/{repo_id}"})()

    def upload_folder(self, folder_path, run_as_future=False, **kwargs):
        from concurrent.futures import Future

        folder = Path(folder_path)
        self.uploads.append(
            {
                "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
                "card": (folder / "README.md").read_text() if (folder / "README.md").exists() else None,
            }
        )
        if run_as_future:  # a checkpoint's push: transformers waits on it
            done = Future()
            done.set_result(None)
            return done


@pytest.mark.slow
def test_push_to_hub_sends_the_project_card_and_final_files_after_they_are_written(tmp_path, pairs_file, monkeypatch):
    import transformers.trainer
    import yaml

    from crrelu_llm.cli import main

    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", hub)
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    common = ["--dataset_name", str(pairs_file), "--max_steps", "1", "--use_cpu", "true"]
    common += ["--per_device_train_batch_size", "2", "--max_eval_samples", "4"]
    # a local original whose own card says where it came from: the lineage dpo -> sft -> original -> Hub
    from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer

    original = tmp_path / "original"
    tiny_causal_lm("gpt2").save_pretrained(original)
    tiny_tokenizer().save_pretrained(original)
    (original / "README.md").write_text("---\nlicense: mit\nbase_model: openai-community/gpt2\n---\n")
    assert main(["sft", "--model_name_or_path", str(original), "--output_dir", str(sft), *common]) == 0
    argv = ["dpo", "--model_name_or_path", str(sft), "--output_dir", str(dpo), *common]
    assert main([*argv, "--push_to_hub", "true", "--hub_model_id", "me/crrelu-dpo"]) == 0
    assert hub.uploads, "nothing was pushed"
    last = hub.uploads[-1]
    assert {"final_metrics.json", "README.md", "model.safetensors", "recipe.yaml", "reference.json"} <= set(
        last["files"]
    )
    card = last["card"]
    assert card == (dpo / "README.md").read_text() and "# DPO run of crrelu-llm" in card
    assert "## Loading and serving" in card
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "openai-community/gpt2" and meta["license"] == "mit"
    assert meta["library_name"] == "transformers" and {"crrelu-llm", "dpo", "crrelu"} <= set(meta["tags"])
    assert "datasets" not in meta  # a local file is no Hub dataset; the card's text names it
    results = meta["model-index"][0]["results"]
    metrics = json.loads((dpo / "final_metrics.json").read_text())
    reported = {m["type"]: m["value"] for r in results for m in r["metrics"]}
    assert reported["eval_rewards/accuracies"] == pytest.approx(metrics["eval_rewards/accuracies"])


def test_the_card_metadata_names_base_model_datasets_license_and_results(tmp_path):
    import yaml

    from crrelu_llm.training.model_card import model_card
    from crrelu_llm.training.recipes import recipe_from_dict

    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\nbase_model: openai-community/gpt2\n---\n# a model\n")
    patch_args, data_args, _, model_args = recipe_from_dict(
        "dpo", {"model_name_or_path": str(base), "dataset_name": "Anthropic/hh-rlhf", "output_dir": "o"}
    )
    report = {"count": 2, "replaced": [{"old_type": "NewGELUActivation"}], "layers": None}
    card = model_card("dpo", model_args, patch_args, {"source": "Anthropic/hh-rlhf"}, report, None, {"eval_loss": 0.5})
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "openai-community/gpt2"  # a local base: its own card says what it came from
    assert meta["license"] == "mit" and meta["datasets"] == ["Anthropic/hh-rlhf"]
    assert meta["model-index"][0]["results"][0]["metrics"][0] == {
        "type": "eval_loss",
        "value": 0.5,
        "name": "eval_loss",
    }


def test_every_command_the_model_card_prints_parses():
    from crrelu_llm.cli import build_parser
    from crrelu_llm.training import model_card

    text = "\n".join(model_card.LOADING)
    commands = re.findall(r"`(crrelu-llm [^`]+)`", text)
    assert commands, "the card prints no command"
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # exits 2 on a flag the command lacks
