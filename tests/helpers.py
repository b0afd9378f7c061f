"""Helpers shared by test modules (the folder is on sys.path through conftest.py)."""

import doctest
import importlib.util
import sys
from pathlib import Path

import yaml
from transformers import TrainerCallback

from crrelu_llm.cli import main as cli_main
from crrelu_llm.experiments.experiment import DEMO_RECIPE


def small_recipe(tmp_path: Path, arms: dict, evaluations: dict | None = None, **changes) -> Path:
    """The demo recipe made small (seconds per stage on 2 CPU cores), with the given arms."""
    recipe = yaml.safe_load(DEMO_RECIPE.read_text())
    recipe["task"].update(n_train=200, n_test=30)
    recipe["pretrain"]["config"].update(n_layer=2, n_embd=32, n_inner=64)
    recipe["pretrain"]["train"].update(max_steps=20, per_device_train_batch_size=32, save_steps=20, logging_steps=10)
    recipe["sft"].update(max_steps=4, save_steps=4, logging_steps=2)
    recipe["preference"].update(max_steps=4, save_steps=4, logging_steps=2)
    recipe["arms"] = arms
    recipe["baseline_arm"] = next(iter(arms))
    recipe["evaluations"] = (
        evaluations
        if evaluations is not None
        else {"drift": {"max_samples": 10}, "rewards": {"max_samples": 20, "max_length": 32}}
    )
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """A module of ``scripts/`` or ``benchmarks/`` (not part of the package), loaded from its file."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def recipe(tmp_path, pairs_file, **overrides):
    config = {
        "model_name_or_path": "tiny-gpt2",
        "dataset_name": str(pairs_file),
        "eval_fraction": 0.1,
        "output_dir": str(tmp_path / "run"),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "learning_rate": 1e-3,
        "epsilon_learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": 2,
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "max_length": 32,
        "report_to": [],
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    config.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Crash(Exception):
    pass


class CrashAfterStep3(TrainerCallback):
    """Stops a run at step 3, after checkpoint-2, as a kill would."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise Crash()


def experiment_main(recipe: Path, out: str) -> int:
    return cli_main(["experiment", "--config", str(recipe), "--out", str(out)])


def reduced_demo(tmp_path: Path, dpo_steps: int = 12, save_steps: int = 6, capability: bool = False) -> Path:
    """The embedded demo recipe with everything made small (a minute or two on 2 CPU cores);
    the lm-eval benchmark and the probes only with ``capability`` (they add seconds per model)."""
    recipe = yaml.safe_load(DEMO_RECIPE.read_text())
    recipe["task"].update(n_train=300, n_test=40)
    recipe["pretrain"]["config"].update(n_layer=2, n_embd=32, n_inner=64)
    recipe["pretrain"]["train"].update(max_steps=40, per_device_train_batch_size=32, save_steps=20, logging_steps=10)
    recipe["sft"].update(max_steps=6, save_steps=3, logging_steps=2)
    recipe["preference"].update(max_steps=dpo_steps, save_steps=save_steps, logging_steps=2)
    recipe["evaluations"]["rewards"].update(max_samples=40)
    recipe["evaluations"]["winrate"].update(num_prompts=40)
    recipe["evaluations"]["drift"].update(max_samples=20)
    recipe["evaluations"]["benchmark"].update(limit=40)
    recipe["evaluations"]["probe"].update(max_samples=20)
    if not capability:
        del recipe["evaluations"]["benchmark"], recipe["evaluations"]["probe"]
    path = tmp_path / "demo_small.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


# The GELU families of the paper's question, then ReLU / SiLU / mixture-of-experts families.
ARCHITECTURES = {
    "gpt2": "NewGELUActivation",
    "gptj": "NewGELUActivation",
    "gpt_neox": "GELUActivation",
    "bloom": "BloomGelu",
    "falcon": "GELUActivation",
    "phi": "NewGELUActivation",
    "gemma": "GELUTanh",
    "gemma2": "GELUTanh",
    "gemma3_text": "GELUTanh",
    "biogpt": "GELUActivation",
    "codegen": "NewGELUActivation",
    "opt": "ReLU",
    "llama": "SiLUActivation",
    "mistral": "SiLUActivation",
    "qwen2": "SiLUActivation",
    "qwen3": "SiLUActivation",
    "phi3": "SiLUActivation",
    "mixtral": "SiLUActivation",
    "qwen2_moe": "SiLUActivation",
}


# Examples that train or build a trainer print what transformers prints (progress, metrics): the
# transformers convention, `# doctest: +IGNORE_RESULT`, runs the line and ignores what it prints.
IGNORE_RESULT = doctest.register_optionflag("IGNORE_RESULT")


class ExampleChecker(doctest.OutputChecker):
    def check_output(self, want, got, optionflags):
        return bool(optionflags & IGNORE_RESULT) or super().check_output(want, got, optionflags)


def run_examples(tests) -> int:
    """Run doctests (``+ELLIPSIS`` on, ``+IGNORE_RESULT`` understood); fails naming the first that
    fails; how many examples ran."""
    runner = doctest.DocTestRunner(checker=ExampleChecker(), optionflags=doctest.ELLIPSIS)
    ran = 0
    for test in tests:
        report = []
        result = runner.run(test, out=report.append)
        assert result.failed == 0, f"{test.name}: {result.failed} example(s) failed:\n" + "".join(report)[-3000:]
        ran += result.attempted
    return ran


def wandb_records(path: Path):
    """The records of an offline W&B run file (``run-<id>.wandb``): a 7-byte W&B header, then
    LevelDB's log format (32 KiB blocks; each record a CRC, a length, a type: full, or first,
    middle and last pieces), each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pieces, block = Path(path).read_bytes(), 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record
