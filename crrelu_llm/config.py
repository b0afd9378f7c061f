"""Recipe keys and their checks: this project's dataclasses beside TRL's configs.

A recipe is flat YAML whose keys are TRL's own field names (``DPOConfig``/``SFTConfig``,
``ModelConfig``) plus this project's: :class:`CRReLUArguments` (the patch, the reference),
:class:`~crrelu_llm.data.DataArguments`, and the eps optimiser settings, which travel in the
trainer's own ``args`` (:class:`CRReLUDPOConfig`, :class:`CRReLUSFTConfig`, as TRL puts an
``XConfig`` beside each ``XTrainer``). Command-line flags override the file. Every key is
checked before any model is loaded.

A recipe may hold ``arms``: name -> keys that override the shared ones for that arm (``{arm}``
in any string value is replaced by the arm's name). ``--arm NAME`` picks one::

    crrelu-llm sft --config recipes/gpt2-large/hh/sft.yaml --arm crrelu
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import DPOConfig, ModelConfig, SFTConfig

from .data import DataArguments
from .errors import RecipeError

logger = logging.getLogger("crrelu_llm.config")

EPSILON_MODES = ("train", "freeze", "only")
CALIBRATE = "calibrate"
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


@dataclass
class CRReLUArguments:
    """This project's recipe keys: the patch, the eps optimisation, the reference."""

    activation: str | None = field(
        default="crrelu",
        metadata={"help": "Activation to put into the MLPs: crrelu, or any transformers name (relu, gelu, ...) for a "
                  "control arm; null or 'none' keeps the model as it is (the baseline arm)."},
    )
    epsilon_init: str = field(
        default=0.01,
        metadata={"help": "Initial CRReLU epsilon: a number (the paper: 0.01), or 'calibrate': per layer, the "
                  "least-squares value that best imitates the replaced activation on the original model's own "
                  "pre-activations over calibration_samples training rows."},
    )
    calibration_samples: int = field(
        default=64, metadata={"help": "Training rows whose text calibrates eps (epsilon_init: calibrate)."}
    )
    swap_steps: int | None = field(
        default=None,
        metadata={"help": "Gradual swap (sft, distill): blend (1-a)*original + a*new activation, a from 0 to 1 over "
                  "the first swap_steps steps; later checkpoints hold the pure new activation."},
    )
    patch_layers: list[int] | None = field(
        default=None, metadata={"help": "Block indices to patch (negative from the end); default all blocks."}
    )
    epsilon_mode: str = field(
        default="train", metadata={"help": "train (with the model), freeze (eps fixed), only (train eps alone)."}
    )
    reference: str = field(
        default="policy",
        metadata={"help": "DPO reference model: 'policy' (the patched policy as it is when DPO starts: standard DPO), "
                  "'original' (the unpatched model), or a checkpoint path (e.g. the SFT run)."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use (default: the model's)."}
    )
    crrelu_kernel: str = field(
        default="auto", metadata={"help": "CRReLU kernel: auto, torch, triton or compiled (see crrelu_llm.kernels)."}
    )
    continue_adapter: bool = field(
        default=False,
        metadata={"help": "When model_name_or_path is a LoRA run: train its adapter further (with use_peft: true). "
                  "Default: start from the run's adapter merged into its base model."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace an output_dir that holds a different run (another model or recipe). Without it "
                  "such a directory is refused before anything is written; the same run resumes by itself."},
    )

    def __post_init__(self):
        if isinstance(self.activation, str) and self.activation.lower() in ("none", "null", ""):
            self.activation = None
        if self.epsilon_init != CALIBRATE:
            try:
                self.epsilon_init = float(self.epsilon_init)
            except (TypeError, ValueError):
                raise RecipeError(f"epsilon_init must be a number such as 0.01 or 'calibrate', got "
                                  f"{self.epsilon_init!r}") from None
        if self.activation is not None:
            from .patch import make_activation

            initial = 0.01 if self.epsilon_init == CALIBRATE else self.epsilon_init
            make_activation(self.activation, initial)  # unknown name -> closest valid ones
        if self.epsilon_init == CALIBRATE and self.activation != "crrelu":
            raise RecipeError("epsilon_init: calibrate sets CRReLU's eps: it needs activation: crrelu")
        if self.calibration_samples < 1:
            raise RecipeError(f"calibration_samples must be a positive number of rows, got {self.calibration_samples}")
        if self.swap_steps is not None and (self.swap_steps < 1 or self.activation is None):
            raise RecipeError("swap_steps must be a positive number of steps, with an activation to swap in")
        if self.epsilon_mode not in EPSILON_MODES:
            raise RecipeError(f"epsilon_mode must be one of {', '.join(EPSILON_MODES)}, got {self.epsilon_mode!r}")
        from .kernels import KERNELS

        if self.crrelu_kernel not in KERNELS:
            raise RecipeError(f"crrelu_kernel must be one of {', '.join(KERNELS)}, got {self.crrelu_kernel!r}")


@dataclass
class EpsilonTrainingArguments:
    """The eps optimiser settings, carried by the trainer's ``args`` (see :class:`CRReLUDPOConfig`)."""

    epsilon_learning_rate: float | None = field(
        default=1e-4,
        metadata={"help": "Learning rate of the epsilon parameter group (no weight decay). At DPO learning rates a "
                  "scalar epsilon barely moves, hence its own rate; null uses learning_rate (the paper's setup)."},
    )

    def __post_init__(self):
        if self.epsilon_learning_rate is not None and self.epsilon_learning_rate < 0:
            raise RecipeError(f"epsilon_learning_rate must be >= 0, got {self.epsilon_learning_rate}")
        super().__post_init__()


TRUNCATION_MODES = ("keep_end", "keep_start")


@dataclass
class PromptTruncationArguments:
    """Truncation as the DPO reference code (and so the paper) does it, which TRL no longer
    offers: when prompt + longest response exceed ``max_length``, the prompt is cut to
    ``max_prompt_length`` tokens (its end kept with ``keep_end``, used for Anthropic HH, whose
    last turns matter; its start with ``keep_start``), then the responses to what is left."""

    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Tokens a prompt keeps when prompt + longest response exceed max_length (the DPO reference "
                  "code: 256 within 512); null: TRL's own truncation of the whole sequence."},
    )
    prompt_truncation_mode: str = field(
        default="keep_end", metadata={"help": "keep_end (cut the prompt's start: HH) or keep_start (cut its end)."}
    )

    def __post_init__(self):
        if self.prompt_truncation_mode not in TRUNCATION_MODES:
            raise RecipeError(f"prompt_truncation_mode must be one of {', '.join(TRUNCATION_MODES)}, got "
                              f"{self.prompt_truncation_mode!r}")
        if self.max_prompt_length is not None:
            if self.max_prompt_length < 1:
                raise RecipeError(f"max_prompt_length must be a positive number of tokens, got {self.max_prompt_length}")
            if self.max_length is None or self.max_prompt_length >= self.max_length:
                raise RecipeError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length "
                                  f"({self.max_length}), e.g. 256 within 512")
            if getattr(self, "packing", False):
                raise RecipeError("max_prompt_length cuts prompts apart from responses, which packing does not keep: "
                                  "set packing: false or drop max_prompt_length")
        super().__post_init__()


@dataclass
class ReferenceCacheArguments:
    """Where DPO runs that share a reference keep its log-probabilities (with ``precompute_ref_log_probs``)."""

    ref_logps_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Directory of reference log-probabilities shared across runs (every beta and seed of an "
                  "arm), keyed by a checksum of the reference weights, the tokenized data and the truncation "
                  "settings; needs precompute_ref_log_probs: true. Null: TRL's own cache only."},
    )

    def __post_init__(self):
        if self.ref_logps_cache_dir and not self.precompute_ref_log_probs:
            raise RecipeError("ref_logps_cache_dir keeps precomputed reference log-probabilities: set "
                              "precompute_ref_log_probs: true, or drop ref_logps_cache_dir")
        super().__post_init__()


@dataclass
class CRReLUDPOConfig(ReferenceCacheArguments, PromptTruncationArguments, EpsilonTrainingArguments, DPOConfig):
    """TRL's ``DPOConfig`` plus the eps settings that :class:`~crrelu_llm.trainer.CRReLUDPOTrainer` reads."""


@dataclass
class CRReLUSFTConfig(PromptTruncationArguments, EpsilonTrainingArguments, SFTConfig):
    """TRL's ``SFTConfig`` plus the eps settings that :class:`~crrelu_llm.trainer.CRReLUSFTTrainer` reads."""


@dataclass
class DistillationArguments:
    """What :class:`~crrelu_llm.trainer.CRReLUDistillTrainer` matches: the original's next-token
    distribution (forward KL, at a temperature), and optionally each MLP's output."""

    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The teacher; default: model_name_or_path as loaded, before the patch."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of both distributions (KL x T^2)."})
    student_dropout: bool = field(
        default=False, metadata={"help": "Keep the student's dropout during distillation (default: off, like the "
                                 "teacher's)."},
    )
    mlp_mse_weight: float = field(
        default=0.0, metadata={"help": "Weight of the mean squared error between each MLP's output in the student and "
                               "in the teacher (0: logits only)."},
    )

    def __post_init__(self):
        if not self.temperature > 0:
            raise RecipeError(f"temperature must be > 0, got {self.temperature}")
        if self.mlp_mse_weight < 0:
            raise RecipeError(f"mlp_mse_weight must be >= 0, got {self.mlp_mse_weight}")
        super().__post_init__()


@dataclass
class CRReLUDistillConfig(DistillationArguments, PromptTruncationArguments, EpsilonTrainingArguments, SFTConfig):
    """TRL's ``SFTConfig`` (data, batching, saving) plus what distillation matches."""


CONFIGS = {"dpo": CRReLUDPOConfig, "sft": CRReLUSFTConfig, "distill": CRReLUDistillConfig}


# --------------------------------------------------------------------------- recipes


def recipe_types(command: str):
    """The dataclasses a ``sft``/``dpo`` recipe fills, in the order :func:`parse_recipe` returns them."""
    return (CRReLUArguments, DataArguments, CONFIGS[command], ModelConfig)


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
    close = difflib.get_close_matches(key, list(index), n=1)
    return f"unknown {'flag' if flag else 'key'} {show(key)}" + (f"; did you mean {show(close[0])}?" if close else "")


def check_flag_names(argv: list[str], command: str) -> None:
    """Unknown or removed ``--key`` flags on the command line, named before anything else is
    checked (a later error, such as bf16 on a CPU, would otherwise hide the typo)."""
    index = _field_index(recipe_types(command))
    problems = []
    for arg in argv:
        if not arg.startswith("--") or len(arg) == 2:
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")  # HfArgumentParser also takes --output-dir
        if name in index or name in ("config", "help") or (name.startswith("no_") and name[3:] in index):
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
        if key not in index:
            problems.append(_unknown_key_problem(key, index))
            continue
        expected = _simple_type(index[key])
        if value is None or expected is None or (key in NUMBER_OR_WORD and isinstance(value, (int, float, str))):
            continue  # a number or a word: checked by the dataclass
        ok = (isinstance(value, bool) if expected is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else
              isinstance(value, int) and not isinstance(value, bool) if expected is int else
              isinstance(value, str))
        if not ok:
            problems.append(f"{key!r} must be a {expected.__name__}, got {value!r}")
    if problems:
        raise RecipeError(f"{path}: " + "; ".join(problems))


# Keys that say where a run writes or how it reports, not what it computes: a resumed run may
# change them, and runs pooled into one arm may differ in them (and in the seed).
BOOKKEEPING_KEYS = frozenset({"output_dir", "logging_dir", "run_name", "resume_from_checkpoint",
                              "overwrite_output_dir", "report_to", "hub_token", "push_to_hub", "hub_model_id"})

# Numeric keys and the values that make sense, checked before anything is loaded. A value
# outside these is refused with the key named (a negative beta, for one, would invert DPO).
_POSITIVE, _NON_NEGATIVE, _FRACTION = (lambda v: v > 0, "> 0"), (lambda v: v >= 0, ">= 0"), (lambda v: 0 <= v <= 1,
                                                                                                "in [0, 1]")
RANGES = {
    "beta": (*_POSITIVE, "beta <= 0 inverts or removes the DPO objective"),
    "learning_rate": (*_NON_NEGATIVE, ""),
    "epsilon_learning_rate": (*_NON_NEGATIVE, ""),
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
    "epsilon_init": (lambda v: v == v and abs(v) != float("inf"), "a finite number", ""),
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


def _fill_arm(value, arm: str):
    if isinstance(value, str):
        return value.replace("{arm}", arm)
    if isinstance(value, list):
        return [_fill_arm(v, arm) for v in value]
    return value


def recipe_arms(config: dict) -> list[str]:
    """The arm names a recipe defines (empty when it has no ``arms``)."""
    return list(config.get("arms") or {})


def select_arm(config: dict, arm: str | None, path: str) -> dict:
    """The recipe's shared keys with ``arms[arm]`` laid over them and ``{arm}`` filled in."""
    arms = config.get("arms")
    shared = {k: v for k, v in config.items() if k != "arms"}
    if arms is None:
        if arm is not None:
            raise RecipeError(f"--arm {arm}: {path} defines no arms; drop --arm")
        return shared
    if not isinstance(arms, dict) or not all(isinstance(v, dict) for v in arms.values()):
        raise RecipeError(f"{path}: 'arms' must map each arm name to its keys, e.g. crrelu: {{activation: crrelu}}")
    if arm is None:
        raise RecipeError(f"{path} defines the arms {', '.join(arms)}: pass --arm NAME to choose one")
    if arm not in arms:
        close = difflib.get_close_matches(arm, list(arms), n=1)
        raise RecipeError(f"--arm {arm}: {path} has no such arm (it has {', '.join(arms)})"
                          + (f"; did you mean {close[0]!r}?" if close else ""))
    return {k: _fill_arm(v, arm) for k, v in {**shared, **arms[arm]}.items()}


def _take_option(argv: list[str], name: str) -> str | None:
    """Remove ``name VALUE`` (or ``name=VALUE``) from ``argv`` and return VALUE."""
    for i, arg in enumerate(argv):
        if arg == name:
            if i + 1 >= len(argv):
                raise RecipeError(f"{name} needs a value")
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def parse_recipe(command: str, argv: list[str]):
    """(CRReLUArguments, DataArguments, CRReLUDPOConfig|CRReLUSFTConfig, ModelConfig) from
    ``--config RECIPE`` (``--arm NAME`` for a recipe with arms) and ``--key value`` flags."""
    argv = list(argv)
    path, arm = _take_option(argv, "--config"), _take_option(argv, "--arm")
    check_flag_names(argv, command)  # a typo is named before anything else is read
    if path is None:
        if arm is not None:
            raise RecipeError("--arm needs --config RECIPE")
        return recipe_from_dict(command, {}, argv)
    config = select_arm(read_recipe(path), arm, path)
    return recipe_from_dict(command, config, argv, source=path + (f" (arm {arm})" if arm else ""))


def recipe_from_dict(command: str, config: dict, argv: list[str] = (), source: str = "recipe"):
    """The recipe dataclasses from a mapping of keys (a recipe file's content, or the keys an
    experiment stage is given), with ``--key value`` flags in ``argv`` laid over them."""
    from trl import TrlParser

    argv = list(argv)
    check_flag_names(argv, command)
    check_recipe_keys(config, command, source)
    # what the user gave (defaults are in range), before TrainingArguments' own checks
    check_ranges({**config, **_numeric_flags(argv)}, source)
    config = dict(config)
    if not any(a in ("--bf16", "--bf16=true", "--bf16=True") for a in argv) and "bf16" not in config \
            and not accelerator_available():
        # DPOConfig and SFTConfig default to bf16, which TrainingArguments refuses on a CPU-only
        # machine: a first run there should train (in fp32) rather than stop on a default.
        logger.warning("no GPU found: training in float32 on the CPU (bf16 is off; set bf16: true to insist)")
        config["bf16"] = False
    for key, value in (config.pop("env", None) or {}).items():  # TRL's `env:` block
        os.environ[key] = str(value)
    parser = TrlParser(recipe_types(command), prog=f"crrelu-llm {command}")
    parser.set_defaults_with_config(**config)
    try:
        crrelu_args, data_args, training_args, model_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        where = "" if source == "recipe" else f"{source}: "
        raise RecipeError(f"{where}invalid recipe value: {err}") from None
    if training_args.use_liger_kernel and crrelu_args.activation is not None:
        raise RecipeError(
            "use_liger_kernel: true replaces the MLP forward with fused kernels that never call the activation "
            "module, so the patched activation would be silently bypassed. Set use_liger_kernel: false."
        )
    if model_args.model_name_or_path is None:
        raise RecipeError("model_name_or_path is required (a hub id, a local checkpoint or tiny-<model_type>)")
    if command == "dpo" and crrelu_args.swap_steps:
        raise RecipeError("swap_steps blends the activation in during sft or distill; DPO starts from a model whose "
                          "swap is done (its reference is that model)")
    return crrelu_args, data_args, training_args, model_args


def resolved_recipe(crrelu_args, data_args, training_args, model_args) -> dict:
    """Every key of a parsed recipe with its value (what ``recipe.yaml`` in a run records)."""
    return {**dataclasses.asdict(crrelu_args), **dataclasses.asdict(data_args), **dataclasses.asdict(model_args),
            **json.loads(training_args.to_json_string())}


def accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or (
        torch.backends.mps.is_available())


