"""Reading a recipe: a YAML file (or an experiment stage's keys), its arms, and command-line flags.

A recipe is flat YAML whose keys are TRL's own field names (``DPOConfig``/``SFTConfig``,
``ModelConfig``) plus this project's (:mod:`crrelu_llm.training.config`). TRL's ``TrlParser``
fills the dataclasses; before it runs, every key is checked here (unknown keys with a "did you
mean", keys TRL removed with what to use instead, types and value ranges), so that a typo stops
the run before any model is loaded. Command-line flags override the file.

A recipe may hold ``arms``: name -> keys that override the shared ones for that arm (``{arm}``
in any string value is replaced by the arm's name). ``--arm NAME`` picks one::

    crrelu-llm sft --config recipes/gpt2-large/hh/sft.yaml --arm crrelu
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import textwrap
import types
import typing
from pathlib import Path

import yaml
from trl import ModelConfig

from crrelu_llm.data.preference import DataArguments
from crrelu_llm.errors import RecipeError, did_you_mean
from crrelu_llm.help import RawDescriptionDefaultsShown
from crrelu_llm.trackers import check_trackers
from crrelu_llm.training.arms import check_arms, check_kernels, kernel_options, select_arm
from crrelu_llm.training.config import ActivationParameterArguments, PatchArguments
from crrelu_llm.training.objectives import OBJECTIVES, PREFERENCE_OBJECTIVES, REFERENCE_FREE

logger = logging.getLogger("crrelu_llm.config")


NUMBER_OR_WORD = {"epsilon_init"}  # typed str so that a recipe may say `calibrate`; numbers welcome


# Keys TRL or transformers have removed and what to do instead.
REMOVED_KEYS = {
    "warmup_ratio": "transformers 5 takes the ratio in warmup_steps: a float in [0, 1) is a share of all steps",
    "max_completion_length": "use max_length (and truncation_mode)",
    "max_target_length": "use max_length",
    "rpo_alpha": "use loss_type: [sigmoid, sft] with loss_weights, e.g. [1.0, 1.0]",
    "generate_during_eval": "TRL no longer generates during eval: use `crrelu-llm eval winrate` afterwards",
    "reference_free": "choose the reference with this project's `reference` key",
    "ref_model_init_kwargs": "the reference is chosen with the `reference` key (policy, original or a path)",
    "force_use_ref_model": "the reference is always passed explicitly here: use the `reference` key",
    "model_adapter_name": "removed from TRL",
    "ref_adapter_name": "removed from TRL; choose the reference with the `reference` key",
    "is_encoder_decoder": "removed from TRL (causal LMs only here)",
    "label_pad_token_id": "removed from TRL",
    "padding_value": "removed from TRL: use pad_token",
}


# Old key names still read, and the key each now is.
ALIASES = {
    "epsilon_learning_rate": "activation_learning_rate",
    "epsilon_mode": "activation_parameters",
}  # old name -> key


def resolve_aliases(config: dict, argv: list[str], source: str) -> tuple[dict, list[str]]:
    """``config`` and ``argv`` with old key names (:data:`ALIASES`) under their new ones; the same
    key given under both names (with different values) is refused."""
    config = dict(config)
    for old, new in ALIASES.items():
        if old in config:
            value = config.pop(old)
            if new in config and config[new] != value:
                raise RecipeError(
                    f"{source}: {old} ({value!r}) is another name for {new} ({config[new]!r}); keep one of them"
                )
            config[new] = value
    argv = [_new_flag(a) for a in argv]
    return config, argv


def _new_flag(arg: str) -> str:
    """``--old_name[=v]`` or ``--old-name[=v]`` as ``--new_name[=v]``; any other argument as it is."""
    name, equals, value = arg[2:].partition("=")
    new = ALIASES.get(name.replace("-", "_")) if arg.startswith("--") else None
    return f"--{new}{equals}{value}" if new else arg


def recipe_types(command: str):
    """The dataclasses a ``sft``/``dpo`` recipe fills, in the order :func:`parse_recipe` returns them."""
    return (PatchArguments, DataArguments, OBJECTIVES[command].config, ModelConfig)


def _field_index(types_) -> dict[str, object]:
    """Recipe key -> declared type. Read from the class annotations: HfArgumentParser rewrites
    ``Field.type`` in place (``str | list[str] | None`` becomes ``str``) once a parser is built."""
    index = {}
    for cls in types_:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                index.setdefault(f.name, hints.get(f.name, f.type))
    return index


def _simple_type(annotation):
    """float/int/bool/str when the annotation is one of those (or Optional of one), else None."""
    if isinstance(annotation, str):
        parts = [part.strip() for part in annotation.split("|") if part.strip() not in ("None", "")]
        simple = {"float": float, "int": int, "bool": bool, "str": str}
        return simple.get(parts[0]) if len(parts) == 1 else None
    if isinstance(annotation, (types.UnionType,)) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 and args[0] in (float, int, bool, str) else None
    return annotation if annotation in (float, int, bool, str) else None


def _unknown_key_problem(key: str, index: dict, flag: bool = False) -> str:
    show = (lambda k: f"--{k}") if flag else repr
    if key in REMOVED_KEYS:
        return f"{show(key)} was removed from TRL: {REMOVED_KEYS[key]}"
    return f"unknown {'flag' if flag else 'key'} {show(key)}" + did_you_mean(key, index, show)


def check_flag_names(argv: list[str], command: str) -> None:
    """Unknown or removed ``--key`` flags on the command line, named before anything else is
    checked (a later error, such as bf16 on a CPU, would otherwise hide the typo)."""
    index = _field_index(recipe_types(command))
    problems = []
    for arg in argv:
        if not arg.startswith("--") or len(arg) == 2:
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")  # HfArgumentParser also takes --output-dir
        if (
            name in index
            or name in ALIASES
            or name in ("config", "help")
            or (name.startswith("no_") and name[3:] in index)
        ):
            continue
        problems.append(_unknown_key_problem(name, index, flag=True))
    if problems:
        raise RecipeError("command line: " + "; ".join(problems))


def check_recipe_keys(config: dict, command: str, path: str) -> None:
    """Unknown, removed or badly typed keys stop here, before any model is loaded."""
    index = _field_index(recipe_types(command))
    problems = []
    for key, value in config.items():
        if key == "env":
            continue
        key = ALIASES.get(key, key)
        if key not in index:
            problems.append(_unknown_key_problem(key, index))
            continue
        expected = _simple_type(index[key])
        if value is None or expected is None or (key in NUMBER_OR_WORD and isinstance(value, (int, float, str))):
            continue  # a number or a word: checked by the dataclass
        ok = (
            isinstance(value, bool)
            if expected is bool
            else isinstance(value, (int, float)) and not isinstance(value, bool)
            if expected is float
            else isinstance(value, int) and not isinstance(value, bool)
            if expected is int
            else isinstance(value, str)
        )
        if not ok:
            problems.append(f"{key!r} must be a {expected.__name__}, got {value!r}")
    if problems:
        raise RecipeError(f"{path}: " + "; ".join(problems))


# Keys that say where a run writes or how it reports, not what it computes: a resumed run may
# change them, and runs pooled into one arm may differ in them (and in the seed).
BOOKKEEPING_KEYS = frozenset(
    {
        "output_dir",
        "logging_dir",
        "run_name",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "report_to",
        "hub_token",
        "push_to_hub",
        "hub_model_id",
    }
)


# Numeric keys and the values that make sense, checked before anything is loaded. A value
# outside these is refused with the key named (a negative beta, for one, would invert DPO).
_POSITIVE, _NON_NEGATIVE, _FRACTION = (
    (lambda v: v > 0, "> 0"),
    (lambda v: v >= 0, ">= 0"),
    (lambda v: 0 <= v <= 1, "in [0, 1]"),
)


RANGES = {
    "beta": (*_POSITIVE, "beta <= 0 inverts or removes the DPO objective"),
    "learning_rate": (*_NON_NEGATIVE, ""),
    "weight_decay": (*_NON_NEGATIVE, ""),
    "max_grad_norm": (*_NON_NEGATIVE, ""),
    "warmup_steps": (*_NON_NEGATIVE, "an int counts steps, a float below 1 is a share of them"),
    "eval_fraction": (lambda v: 0 < v < 1, "in (0, 1)", ""),
    "lora_dropout": (*_FRACTION, ""),
    "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)", ""),
    "max_length": (*_POSITIVE, ""),
    "per_device_train_batch_size": (*_POSITIVE, ""),
    "per_device_eval_batch_size": (*_POSITIVE, ""),
    "gradient_accumulation_steps": (*_POSITIVE, ""),
    "num_train_epochs": (*_POSITIVE, ""),
    "max_steps": (lambda v: v == -1 or v > 0, "> 0 (or -1: use num_train_epochs)", ""),
    "logging_steps": (*_POSITIVE, ""),
    "save_steps": (*_POSITIVE, ""),
    "eval_steps": (*_POSITIVE, ""),
    "lora_r": (*_POSITIVE, ""),
    "lora_alpha": (*_POSITIVE, ""),
    "max_train_samples": (*_POSITIVE, ""),
    "max_eval_samples": (*_POSITIVE, ""),
    "shp_min_score_ratio": (lambda v: v >= 1, ">= 1 (a ratio of the larger score to the smaller)", ""),
}


def _numeric_flags(argv: list[str]) -> dict:
    """``--key value`` flags whose key has a range and whose value reads as a number."""
    values = {}
    for flag, value in zip(argv, argv[1:]):
        key = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if key in RANGES:
            try:
                values[key] = int(value) if value.lstrip("+-").isdigit() else float(value)  # as typed: 0, not 0.0
            except ValueError:
                pass
    return values


def check_ranges(values: dict, source: str) -> None:
    """Refuse numeric values outside :data:`RANGES`, naming every key that is wrong."""
    problems = []
    for key, (ok, expected, why) in RANGES.items():
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            problems.append(f"{key} must be {expected}, got {value!r}" + (f" ({why})" if why else ""))
    if problems:
        raise RecipeError(f"{source}: " + "; ".join(problems))


def read_recipe(path: str | Path) -> dict:
    """A recipe file as a mapping (not yet checked)."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping of keys to values")
    return config


def _take_option(argv: list[str], name: str) -> str | None:
    """Remove ``name VALUE`` (or ``name=VALUE``) from ``argv`` and return VALUE."""
    for i, arg in enumerate(argv):
        if arg == name:
            if i + 1 >= len(argv):
                raise RecipeError(f"{name} needs a value")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def parse_recipe(command: str, argv: list[str]):
    """(PatchArguments, DataArguments, CRReLUDPOConfig|CRReLUSFTConfig, ModelConfig) from
    ``--config RECIPE`` (``--arm NAME`` for a recipe with arms) and ``--key value`` flags."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print(recipe_parser(command).format_help())
        raise SystemExit(0)
    path, arm = _take_option(argv, "--config"), _take_option(argv, "--arm")
    check_flag_names(argv, command)  # a typo is named before anything else is read
    if path is None:
        if arm is not None:
            raise RecipeError("--arm needs --config RECIPE")
        return recipe_from_dict(command, {}, argv)
    recipe = read_recipe(path)
    config = select_arm(recipe, arm, path)
    args = recipe_from_dict(command, config, argv, source=path + (f" (arm {arm})" if arm else ""))
    check_arms({**recipe, **kernel_options(args[2])}, path)  # a kernel flag applies to every arm alike
    return args


def recipe_parser(command: str):
    """TRL's ``TrlParser`` over the recipe's dataclasses, with a help that starts with this
    project's options (``--config``, ``--arm``, the activation and eps keys) before TRL's."""
    from trl import TrlParser

    own = [f"--{f.name}" for cls in (PatchArguments, ActivationParameterArguments) for f in dataclasses.fields(cls)]
    keys = textwrap.fill(
        f"This project's keys (the first group below, and activation_learning_rate with the trainer's): "
        f"{', '.join(own)}. Then the data keys, then every key of TRL's "
        f"{OBJECTIVES[command].trl_config} and ModelConfig. Unknown keys are refused with the "
        "closest valid one.",
        width=100,
    )
    description = (
        f"Patch a model per a recipe, then train it with TRL's {OBJECTIVES[command].trl_trainer}.\n\n"
        "  --config RECIPE.yaml   the recipe: flat YAML of the keys below (flags override it)\n"
        "  --arm NAME             for a recipe with arms: the arm whose keys are laid over the shared ones\n\n" + keys
    )
    return TrlParser(
        recipe_types(command),
        prog=f"crrelu-llm {command}",
        usage=f"crrelu-llm {command} --config RECIPE.yaml [--arm NAME] [--KEY VALUE ...]",
        description=description,
        formatter_class=RawDescriptionDefaultsShown,
    )


def recipe_from_dict(command: str, config: dict, argv: list[str] = (), source: str = "recipe"):
    """The recipe dataclasses from a mapping of keys (a recipe file's content, or the keys an
    experiment stage is given), with ``--key value`` flags in ``argv`` laid over them."""
    config, argv = resolve_aliases(config, list(argv), source)
    check_flag_names(argv, command)
    check_recipe_keys(config, command, source)
    # what the user gave (defaults are in range), before TrainingArguments' own checks
    check_ranges({**config, **_numeric_flags(argv)}, source)
    config = dict(config)
    if (
        not any(a in ("--bf16", "--bf16=true", "--bf16=True") for a in argv)
        and "bf16" not in config
        and not accelerator_available()
    ):
        # DPOConfig and SFTConfig default to bf16, which TrainingArguments refuses on a CPU-only
        # machine: a first run there should train (in fp32) rather than stop on a default.
        logger.warning("no GPU found: training in float32 on the CPU (bf16 is off; set bf16: true to insist)")
        config["bf16"] = False
    for key, value in (config.pop("env", None) or {}).items():  # TRL's `env:` block
        os.environ[key] = str(value)
    parser = recipe_parser(command)
    parser.set_defaults_with_config(**config)
    try:
        patch_args, data_args, training_args, model_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        where = "" if source == "recipe" else f"{source}: "
        raise RecipeError(f"{where}invalid recipe value: {err}") from None
    check_trackers(training_args.report_to, source)  # a tracker missing stops the run before any model loads
    check_kernels({"": {"activation": patch_args.activation, **kernel_options(training_args)}}, source)
    if model_args.model_name_or_path is None:
        raise RecipeError("model_name_or_path is required (a hub id, a local checkpoint or tiny-<model_type>)")
    if command in REFERENCE_FREE and patch_args.reference != "policy":
        raise RecipeError(
            f"reference: {patch_args.reference!r}: {command} has no reference model (its loss needs "
            "none); drop the reference key, or train with dpo or kto"
        )
    if command in PREFERENCE_OBJECTIVES and patch_args.swap_steps:
        raise RecipeError(
            "swap_steps blends the activation in during sft or distill; DPO starts from a model whose "
            "swap is done (its reference is that model)"
        )
    return patch_args, data_args, training_args, model_args


def resolved_recipe(patch_args, data_args, training_args, model_args) -> dict:
    """Every key of a parsed recipe with its value (what ``recipe.yaml`` in a run records)."""
    return {
        **dataclasses.asdict(patch_args),
        **dataclasses.asdict(data_args),
        **dataclasses.asdict(model_args),
        **json.loads(training_args.to_json_string()),
    }


def accelerator_available() -> bool:
    import torch

    return (
        torch.cuda.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
        or (torch.backends.mps.is_available())
    )
