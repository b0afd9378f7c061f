"""Patch a pretrained causal LM, then SFT or DPO it with TRL, driven by a YAML recipe.

    crrelu-llm sft --config recipes/gpt2/hh/sft_crrelu.yaml
    crrelu-llm dpo --config recipes/gpt2/hh/dpo_crrelu.yaml --beta 0.2 --output_dir runs/b0.2
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m crrelu_llm.cli dpo --config ...

A recipe is flat YAML whose keys are TRL's own field names (``DPOConfig``/``SFTConfig``,
``ModelConfig``) plus this project's (:class:`CRReLUArguments`, :class:`~crrelu_llm.data.DataArguments`).
Command-line flags override the file. Keys are checked before any model is loaded.

The trainers are TRL's, with two additions (:class:`EpsilonTrainingMixin`): the CRReLU
``epsilon`` parameters get their own optimizer parameter group (own learning rate, no weight
decay; built by overriding ``create_optimizer``, so it also holds under DeepSpeed and FSDP), and
their values are logged with the other metrics (``epsilon/<layer>``, mean, min, max) and so end
up in ``trainer_state.json`` and in whatever ``report_to`` names.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import os
import re
import sys
import time
import types
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback

from .data import DataArguments
from .files import write_text_atomic as _write_atomic

logger = logging.getLogger("crrelu_llm.train")

EPSILON_MODES = ("train", "freeze", "only")

# Keys TRL or transformers have removed and what to do instead.
REMOVED_KEYS = {
    "warmup_ratio": "transformers 5 takes the ratio in warmup_steps: a float in [0, 1) is a share of all steps",
    "max_prompt_length": "TRL truncates prompt+completion together now: use max_length (and truncation_mode)",
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
    epsilon_init: float = field(default=0.01, metadata={"help": "Initial CRReLU epsilon."})
    patch_layers: list[int] | None = field(
        default=None, metadata={"help": "Block indices to patch (negative from the end); default all blocks."}
    )
    epsilon_learning_rate: float | None = field(
        default=1e-4,
        metadata={"help": "Learning rate of the epsilon parameter group (no weight decay). At DPO learning rates a "
                  "scalar epsilon barely moves, hence its own rate; null uses learning_rate (the paper's setup)."},
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

    def __post_init__(self):
        if isinstance(self.activation, str) and self.activation.lower() in ("none", "null", ""):
            self.activation = None
        if self.activation is not None:
            from .patch import make_activation

            make_activation(self.activation, self.epsilon_init)  # unknown name -> closest valid ones
        if self.epsilon_mode not in EPSILON_MODES:
            raise ValueError(f"epsilon_mode must be one of {', '.join(EPSILON_MODES)}, got {self.epsilon_mode!r}")
        if self.epsilon_learning_rate is not None and self.epsilon_learning_rate < 0:
            raise ValueError(f"epsilon_learning_rate must be >= 0, got {self.epsilon_learning_rate}")
        from .kernels import KERNELS

        if self.crrelu_kernel not in KERNELS:
            raise ValueError(f"crrelu_kernel must be one of {', '.join(KERNELS)}, got {self.crrelu_kernel!r}")


# --------------------------------------------------------------------------- recipes


class RecipeError(ValueError):
    """A recipe key or value is wrong; the message names it and the fix."""


def _dataclass_types(command: str):
    from trl import DPOConfig, ModelConfig, SFTConfig

    return (CRReLUArguments, DataArguments, DPOConfig if command == "dpo" else SFTConfig, ModelConfig)


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
    index = _field_index(_dataclass_types(command))
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
    index = _field_index(_dataclass_types(command))
    problems = []
    for key, value in config.items():
        if key == "env":
            continue
        if key not in index:
            problems.append(_unknown_key_problem(key, index))
            continue
        expected = _simple_type(index[key])
        if value is None or expected is None:
            continue
        ok = (isinstance(value, bool) if expected is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else
              isinstance(value, int) and not isinstance(value, bool) if expected is int else
              isinstance(value, str))
        if not ok:
            problems.append(f"{key!r} must be a {expected.__name__}, got {value!r}")
    if problems:
        raise RecipeError(f"{path}: " + "; ".join(problems))


def parse_recipe(command: str, argv: list[str]):
    """(CRReLUArguments, DataArguments, DPOConfig|SFTConfig, ModelConfig) from --config and flags."""
    from trl import TrlParser

    argv = list(argv)
    check_flag_names(argv, command)
    if "--config" in argv:
        path = argv[argv.index("--config") + 1]
        try:
            config = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise RecipeError(f"recipe {path} does not exist") from None
        except yaml.YAMLError as err:
            raise RecipeError(f"recipe {path} is not valid YAML: {err}") from None
        if not isinstance(config, dict):
            raise RecipeError(f"recipe {path} must be a YAML mapping of keys to values")
        check_recipe_keys(config, command, path)
    parser = TrlParser(_dataclass_types(command), prog=f"crrelu-llm {command}")
    try:
        crrelu_args, data_args, training_args, model_args = parser.parse_args_and_config(argv)
    except ValueError as err:
        raise RecipeError(f"invalid recipe value: {err}") from None
    if training_args.use_liger_kernel and crrelu_args.activation is not None:
        raise RecipeError(
            "use_liger_kernel: true replaces the MLP forward with fused kernels that never call the activation "
            "module, so the patched activation would be silently bypassed. Set use_liger_kernel: false."
        )
    if model_args.model_name_or_path is None:
        raise RecipeError("model_name_or_path is required (a hub id, a local checkpoint or tiny-<model_type>)")
    return crrelu_args, data_args, training_args, model_args


# --------------------------------------------------------------------------- trainers


def _active_epsilons(model) -> dict[str, torch.nn.Parameter]:
    from .patch import epsilon_parameters

    return {n: p for n, p in epsilon_parameters(model).items() if ".original_module." not in n}


def _value(p: torch.Tensor) -> float:
    from .patch import epsilon_tensor

    return float(epsilon_tensor(p).float().item())


def epsilon_logs(model) -> dict[str, float]:
    """``epsilon/<block>`` for every CRReLU, plus mean/min/max (empty for unpatched models)."""
    from .patch import _layer_index

    values = {}
    for name, p in _active_epsilons(model).items():
        layer = _layer_index(name)
        key = f"epsilon/{layer:02d}" if layer is not None else f"epsilon/{name.removesuffix('.epsilon')}"
        if key in values:  # several per block (e.g. MoE shared + routed experts)
            key = f"epsilon/{name.removesuffix('.epsilon')}"
        values[key] = _value(p)
    if values:
        v = list(values.values())
        values.update({"epsilon/mean": sum(v) / len(v), "epsilon/min": min(v), "epsilon/max": max(v)})
    return values


class EpsilonTrainingMixin:
    """Own optimizer group for CRReLU epsilons, and epsilon values in the logs."""

    epsilon_learning_rate: float | None = None

    def __init__(self, *args, **kwargs):
        self._crrelu_reference = kwargs.get("ref_model")
        super().__init__(*args, **kwargs)

    def create_accelerator_and_postprocess(self):
        # Runs inside Trainer.__init__, once the accelerator (and its FSDP plugin) exists and
        # before anything is sharded: TRL shards the DPO reference right after Trainer.__init__.
        super().create_accelerator_and_postprocess()
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        shared = []
        for model in (self.model, self._crrelu_reference):
            shared += fsdp2_share_epsilons(plugin, model, self.accelerator.device)
        if shared:
            logger.info("FSDP2: %d CRReLU epsilons kept unsharded on %s, gradients averaged over ranks",
                        len(shared), self.accelerator.device)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if getattr(self, "_epsilon_group_built", False):
            return optimizer
        self._epsilon_group_built = True
        eps = [p for p in _active_epsilons(self.model).values() if p.requires_grad]
        if not eps:
            return optimizer
        ids = {id(p) for p in eps}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        lr = self.epsilon_learning_rate if self.epsilon_learning_rate is not None else self.args.learning_rate
        optimizer.add_param_group({"params": eps, "lr": lr, "weight_decay": 0.0, "name": "crrelu_epsilon"})
        logger.info("epsilon parameter group: %d parameters, lr %g, no weight decay", len(eps), lr)
        return optimizer

    def log(self, logs: dict, *args, **kwargs):
        logs.update(epsilon_logs(self.model))
        return super().log(logs, *args, **kwargs)

    def _save(self, output_dir=None, state_dict=None):
        # A ZeRO-3 consolidated state dict is built from the parameters themselves, where the
        # epsilons are (1,)-shaped (see CRReLU): store them 0-dim like every other checkpoint.
        if state_dict:
            from .patch import epsilon_parameters

            names = set(epsilon_parameters(self.model))
            state_dict = {k: (v.reshape(()) if k in names and v.dim() == 1 and v.numel() == 1 else v)
                          for k, v in state_dict.items()}
        return super()._save(output_dir, state_dict=state_dict)


def fsdp2_share_epsilons(plugin, model, device=None) -> list:
    """Make an FSDP2 plugin leave the CRReLU epsilons of ``model`` unsharded, and keep them in sync.

    ``fully_shard`` refuses 0-dim parameters ("doesn't support scalar parameters"), and the
    epsilons are 0-dim. They are tiny, so they stay whole on every rank: the CRReLU modules go
    into the plugin's ``ignored_modules``. ``fully_shard`` does not move ignored parameters, so
    they are moved to ``device`` (the accelerator's) here. FSDP does not reduce their gradients
    either, so a hook averages each trainable epsilon's gradient over the ranks (the same
    data-parallel mean FSDP takes). Call it for the policy and for a DPO reference (frozen: no
    hook) before either is sharded. Returns the CRReLU modules it added."""
    from .activation import CRReLU

    if plugin is None or getattr(plugin, "fsdp_version", 1) != 2 or model is None:
        return []
    modules = [m for m in model.modules() if isinstance(m, CRReLU)]
    if not modules:
        return []
    existing = plugin.ignored_modules
    if isinstance(existing, str):  # accelerate's regex form: resolve it to modules
        existing = [m for n, m in model.named_modules() if re.fullmatch(existing, n)]
    existing = list(existing or [])
    plugin.ignored_modules = existing + [m for m in modules if not any(m is e for e in existing)]
    for module in modules:
        if device is not None:
            module.to(device)
        if module.epsilon.requires_grad and not getattr(module.epsilon, "_crrelu_rank_mean_hook", False):
            module.epsilon.register_post_accumulate_grad_hook(_average_over_ranks)
            module.epsilon._crrelu_rank_mean_hook = True
    return modules


def _average_over_ranks(param: torch.Tensor) -> None:
    import torch.distributed as dist

    if param.grad is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(dist.get_world_size())


def _trainer_class(command: str):
    from trl import DPOTrainer, SFTTrainer

    base = DPOTrainer if command == "dpo" else SFTTrainer
    return type(f"CRReLU{base.__name__}", (EpsilonTrainingMixin, base), {})


# --------------------------------------------------------------------------- the run


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _activation_summary(model) -> dict[str, int]:
    from .patch import find_activations

    return dict(Counter(s.module_type for s in find_activations(model) if s.feed_forward))


def build_reference(choice: str, policy_copy, original, model_args):
    """The DPO reference: a frozen model, and a description for the run's outputs.
    ``policy_copy()`` makes a copy of the patched policy as it is at the start of DPO;
    ``original`` is the unpatched model (needed for ``choice == "original"``)."""
    from .loading import load_causal_lm

    if choice == "policy":
        ref, source = policy_copy(), "the patched policy as it is at the start of DPO"
    elif choice == "original":
        ref, source = original, f"the unpatched original ({model_args.model_name_or_path})"
    else:
        if not Path(choice).exists():
            raise RecipeError(f"reference: {choice!r} is neither 'policy', 'original' nor an existing checkpoint path")
        ref = load_causal_lm(choice, dtype=model_args.dtype or "auto",
                             trust_remote_code=getattr(model_args, "trust_remote_code", False))
        source = f"the checkpoint at {choice}"
    ref.eval().requires_grad_(False)
    return ref, {"reference": choice, "source": source, "activations": _activation_summary(ref)}


def _deepspeed_zero3() -> bool:
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def apply_recipe_patch(model, crrelu_args, source: str) -> dict | None:
    """Patch ``model`` as the recipe says; the patch report (None for the unpatched baseline)."""
    from .patch import patch_model, patch_record

    if crrelu_args.activation is None:
        return None
    if _already_patched(model, crrelu_args.activation):
        # e.g. DPO starting from an SFT checkpoint of this project: re-patching would reset the
        # epsilons it learned, so keep them and say so.
        record = patch_record(model)
        logger.warning("%s is already patched with %s (%d modules): keeping its modules and trained epsilons",
                       source, crrelu_args.activation, len(record["modules"]))
        return {"already_patched": True, "activation": crrelu_args.activation, "count": len(record["modules"]),
                "layers": None, "modules": record["modules"], "epsilon": epsilon_logs(model)}
    return patch_model(model, activation=crrelu_args.activation, epsilon_init=crrelu_args.epsilon_init,
                       layers=crrelu_args.patch_layers).to_dict()


def _already_patched(model, activation: str) -> bool:
    """True when the checkpoint's recorded patch already put ``activation`` everywhere it would go."""
    from .patch import find_activations, patch_record

    record = patch_record(model)
    if not record:
        return False
    recorded = {path for path, entry in record["modules"].items() if entry["activation"] == activation}
    sites = {s.path for s in find_activations(model) if s.feed_forward}
    return bool(recorded) and sites <= recorded


def _apply_epsilon_mode(model, mode: str) -> None:
    eps = _active_epsilons(model)
    if mode == "freeze":
        for p in eps.values():
            p.requires_grad_(False)
    elif mode == "only":
        if not eps:
            raise RecipeError("epsilon_mode: only needs a CRReLU-patched model (activation: crrelu)")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in eps.values():
            p.requires_grad_(True)


def _model_card(command, model_args, crrelu_args, data_summary, patch_report, reference_info, metrics) -> str:
    patch = ("none (baseline arm)" if patch_report is None else
             f"{crrelu_args.activation}, {patch_report['count']} modules, kept from the checkpoint (already patched)"
             if patch_report.get("already_patched") else
             f"{patch_report['count']} x {patch_report['replaced'][0]['old_type']} -> {crrelu_args.activation}"
             + (f", epsilon_init {crrelu_args.epsilon_init}" if crrelu_args.activation == "crrelu" else "")
             + ("" if patch_report.get("already_patched") else
                f", blocks {patch_report['layers']}" if patch_report["layers"] is not None else ", all blocks"))
    lines = [
        "---", "library_name: transformers", "tags: [crrelu-llm, " + command + "]", "---", "",
        f"# {command.upper()} run of crrelu-llm", "",
        f"- Base model: `{model_args.model_name_or_path}`",
        f"- Patch: {patch}",
        f"- Data: {data_summary.get('source')} ({data_summary.get('format')}), {data_summary.get('train_rows')} training "
        f"/ {data_summary.get('eval_rows')} evaluation rows",
    ]
    if reference_info:
        lines.append(f"- Reference model: {reference_info['source']}")
    lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    lines += ["", "Load with `import crrelu_llm` before `AutoModelForCausalLM.from_pretrained(...)`.",
              "Files: `recipe.yaml` (resolved recipe), `patch_report.json`, `reference.json` (DPO), `final_metrics.json`."]
    return "\n".join(lines) + "\n"


@dataclass
class PreparedRun:
    trainer: object
    tokenizer: object
    output_dir: Path
    data_summary: dict
    patch_report: dict | None
    reference_info: dict | None


class RankConsistencyCallback(TrainerCallback):
    """At the end of training, compare a checksum of the weights (and the epsilons) across ranks
    and write ``rank_consistency.json``: DDP/FSDP/ZeRO ranks must end identical."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch.distributed as dist

        checksum = float(sum(_value_sum(p) for p in model.parameters()))
        mine = {"rank": int(os.environ.get("RANK", "0")), "checksum": checksum, "epsilon": epsilon_logs(model)}
        everyone = [mine]
        if dist.is_available() and dist.is_initialized():
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
        if _is_main_process():
            identical = all(r["checksum"] == everyone[0]["checksum"] and r["epsilon"] == everyone[0]["epsilon"]
                            for r in everyone)
            if not identical:
                logger.warning("ranks ended with different weights or epsilons: %s", everyone)
            from accelerate.state import PartialState

            kind = str(PartialState().distributed_type).split(".")[-1]
            _write_atomic(self.output_dir / "rank_consistency.json",
                          json.dumps({"identical": identical, "distributed_type": kind, "ranks": everyone}, indent=2) + "\n")


def _value_sum(p: torch.Tensor) -> float:
    from .patch import full_parameter

    t = full_parameter(p)
    return float(t.double().sum().item()) if t.numel() else 0.0


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` that has its weights and trainer state. A run killed while
    writing a checkpoint leaves a partial one: it is renamed ``checkpoint-N.incomplete`` (kept
    for inspection, ignored by the Trainer) and the one before it is used."""
    checkpoints = sorted((p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                         key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for checkpoint in checkpoints:
        if (checkpoint / "trainer_state.json").exists() and any((checkpoint / w).exists() for w in _WEIGHTS):
            return str(checkpoint)
        if _is_main_process():
            aside = checkpoint.with_name(f"{checkpoint.name}.incomplete")
            logger.warning("%s is incomplete (interrupted while saving): moved to %s", checkpoint, aside.name)
            if aside.exists():
                import shutil

                shutil.rmtree(aside)
            checkpoint.rename(aside)
    return None


def prepare(command: str, crrelu_args: CRReLUArguments, data_args: DataArguments, training_args, model_args,
            callbacks=None) -> PreparedRun:
    """Data, tokenizer, model (patched per the recipe), reference and trainer; nothing trained yet."""
    from . import kernels
    from .data import load_preference_splits, load_sft_splits
    from .loading import load_causal_lm, load_tokenizer
    from .patch import use_vector_epsilons

    kernels.set_kernel(crrelu_args.crrelu_kernel)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # data first: a bad row should stop the run before a model is downloaded
    loader = load_preference_splits if command == "dpo" else load_sft_splits
    train_data, eval_data, data_summary = loader(data_args)

    tokenizer = load_tokenizer(crrelu_args.tokenizer_name_or_path or model_args.model_name_or_path,
                               getattr(training_args, "trust_remote_code", False))
    def load_model():
        return load_causal_lm(model_args.model_name_or_path, dtype=model_args.dtype or "auto",
                              trust_remote_code=getattr(training_args, "trust_remote_code", False),
                              seed=training_args.seed)

    # Under ZeRO-3 the parameters are partitioned as they load, and a deepcopy of such a model
    # is not a working model: copies are loaded again instead (same source, seed and patch).
    zero3 = _deepspeed_zero3()
    model = load_model()
    original = None
    if command == "dpo" and crrelu_args.reference == "original":
        original = load_model() if zero3 else copy.deepcopy(model)
    patch_report = apply_recipe_patch(model, crrelu_args, model_args.model_name_or_path)
    _apply_epsilon_mode(model, crrelu_args.epsilon_mode)
    deepspeed = training_args.deepspeed_plugin is not None
    if deepspeed:  # DeepSpeed cannot broadcast 0-dim parameters: hold the epsilons as (1,)
        use_vector_epsilons(model)

    trainer_kwargs = {}
    reference_info = None
    if command == "dpo":
        def policy_copy():
            if not zero3:
                return copy.deepcopy(model)
            fresh = load_model()
            apply_recipe_patch(fresh, crrelu_args, model_args.model_name_or_path)
            return fresh

        ref, reference_info = build_reference(crrelu_args.reference, policy_copy, original, model_args)
        if deepspeed:
            use_vector_epsilons(ref)
        reference_info["precompute_ref_log_probs"] = training_args.precompute_ref_log_probs
        reference_info["peft"] = bool(model_args.use_peft)
        trainer_kwargs["ref_model"] = ref  # always explicit: TRL's implicit choices differ by setting
        logger.info("DPO reference: %s", reference_info["source"])

    if model_args.use_peft:
        from peft import get_peft_model
        from trl import get_peft_config

        from .patch import peft_modules_to_save

        targets = model_args.lora_target_modules
        if isinstance(targets, str) and targets != "all-linear" and re.fullmatch(r"[\w.]+", targets):
            # TRL's ModelConfig turns a one-element list into a string, which PEFT reads as a regex
            # that must match the whole module path: `[c_attn]` would then target nothing.
            model_args.lora_target_modules = [targets]
        peft_config = get_peft_config(model_args)
        extra = peft_modules_to_save(model) if crrelu_args.epsilon_mode != "freeze" else []
        peft_config.modules_to_save = list(peft_config.modules_to_save or []) + extra
        model = get_peft_model(model, peft_config)

    trainer_cls = _trainer_class(command)
    trainer_cls.epsilon_learning_rate = crrelu_args.epsilon_learning_rate
    trainer = trainer_cls(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_data,
                          processing_class=tokenizer, callbacks=[RankConsistencyCallback(output_dir), *(callbacks or [])],
                          **trainer_kwargs)

    if _is_main_process():
        recipe = {**dataclasses.asdict(crrelu_args), **dataclasses.asdict(data_args),
                  **dataclasses.asdict(model_args), **json.loads(training_args.to_json_string())}
        _write_atomic(output_dir / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=True))
        _write_atomic(output_dir / "patch_report.json", json.dumps(patch_report, indent=2) + "\n")
        _write_atomic(output_dir / "data_summary.json", json.dumps(data_summary, indent=2) + "\n")
        if reference_info:
            _write_atomic(output_dir / "reference.json", json.dumps(reference_info, indent=2) + "\n")
    return PreparedRun(trainer, tokenizer, output_dir, data_summary, patch_report, reference_info)


def run(command: str, crrelu_args: CRReLUArguments, data_args: DataArguments, training_args, model_args,
        callbacks=None) -> dict:
    """Prepare, train (resuming from the last checkpoint in output_dir), evaluate, save."""
    start = time.time()
    prepared = prepare(command, crrelu_args, data_args, training_args, model_args, callbacks)
    trainer, output_dir = prepared.trainer, prepared.output_dir
    resume = training_args.resume_from_checkpoint
    if resume is None:
        resume = last_complete_checkpoint(output_dir)
        if resume:
            logger.warning("resuming from %s", resume)
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    if trainer.eval_dataset is not None and len(trainer.eval_dataset):
        metrics.update(trainer.evaluate())
    eps = epsilon_logs(trainer.model)
    metrics.update({f"final_{k}": v for k, v in eps.items()})
    trainer.save_model(str(output_dir))
    trainer.save_state()  # trainer_state.json (log history, epsilon per step) beside the model
    if _is_main_process():
        prepared.tokenizer.save_pretrained(output_dir)
        card = _model_card(command, model_args, crrelu_args, prepared.data_summary, prepared.patch_report,
                           prepared.reference_info, metrics)
        _write_atomic(output_dir / "README.md", card)
        _write_atomic(output_dir / "final_metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
        accuracy = metrics.get("eval_rewards/accuracies")
        print(
            f"{command} done: {trainer.state.global_step} steps in {time.time() - start:.1f}s"
            + (f", eval reward accuracy {accuracy:.3f}" if accuracy is not None else "")
            + (f", eval loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "")
            + (f", epsilon in [{eps['epsilon/min']:.4g}, {eps['epsilon/max']:.4g}]" if eps else "")
            + f" -> {output_dir}",
            flush=True,
        )
    return metrics


def main(command: str, argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_recipe(command, argv)
    run(command, *args)
    return 0
