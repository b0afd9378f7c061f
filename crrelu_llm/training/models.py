"""Every model a training run loads, and what is done to it before the trainer gets it: the
policy (a checkpoint, or a LoRA run's adapter to train further), patched per the recipe; the
unpatched original where the run needs one; the reference or teacher; the activation-parameter
mode; PEFT. :func:`crrelu_llm.training.train.prepare` calls these in order.

Under ZeRO-3 the parameters are partitioned as they load, and a deepcopy of such a model is not a
working model: copies are loaded again instead (same source, seed and patch).

Example::

    >>> from crrelu_llm.training.models import load_model
    >>> from trl import ModelConfig
    >>> model = load_model(ModelConfig(model_name_or_path="tiny-gpt2"), None)
    >>> type(model).__name__
    'GPT2LMHeadModel'
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from pathlib import Path

from crrelu_llm.errors import RecipeError
from crrelu_llm.ops.distributed import hold_scalars_as_vectors
from crrelu_llm.patching.calibration import calibration_pairs
from crrelu_llm.patching.discovery import base_model, find_activations, needs_measurement
from crrelu_llm.patching.loading import is_adapter_run, load_adapter_run, load_causal_lm, load_tokenizer
from crrelu_llm.patching.patch import (
    activation_logs,
    activation_parameters,
    active_activation_parameters,
    patch_model,
    patch_sites,
    peft_modules_to_save,
)
from crrelu_llm.patching.record import PATCH_CONFIG_KEY, patch_record, restore_patch
from crrelu_llm.runtime import deepspeed_zero3_enabled
from crrelu_llm.training.config import CALIBRATE
from crrelu_llm.training.objectives import reference_free_info
from crrelu_llm.training.recovery import SwapScheduleCallback, blend_in, original_activations

logger = logging.getLogger("crrelu_llm.train")


def activation_summary(model) -> dict[str, int]:
    return dict(Counter(s.module_type for s in find_activations(model) if s.feed_forward))


def calibrates(patch_args) -> bool:
    """Whether the recipe's patch reads text: ``epsilon_init: calibrate``, a ``matched_<base>``
    activation, whose mu and sigma are measured, or its ``refit`` between stages."""
    return (
        patch_args.epsilon_init == CALIBRATE
        or patch_args.refit
        or needs_measurement(patch_args.activation, patch_args.activation_kwargs)
    )


def apply_recipe_patch(model, patch_args, source: str, tokenizer=None, calibration_pairs=None) -> dict | None:
    """Patch ``model`` as the recipe says; the patch report (None for the unpatched baseline).
    ``epsilon_init: calibrate`` calibrates eps on ``calibration_pairs`` (text) first; a
    ``matched_<base>`` activation measures its mu and sigma on them."""
    if patch_args.activation is None:
        return None
    if already_patched(model, patch_args.activation, patch_args.patch_layers):
        # e.g. DPO starting from an SFT checkpoint of this project: re-patching would reset the
        # epsilons it learned, so keep them and say so.
        kept = "its modules and trained parameters" if activation_parameters(model) else "its modules"
        refitted = None
        if patch_args.refit:  # the dynamic variant: fold, re-measure, eps back to 0 (the same function)
            from crrelu_llm.patching.calibration import refit

            refitted = refit(model, tokenizer, calibration_pairs)
            kept += ", its corrections folded into the base and mu, sigma measured again (refit)"
        report = kept_patch_report(model, patch_args.activation, **({"refit": refitted} if refitted else {}))
        logger.warning(
            "%s is already patched with %s (%d modules): keeping %s",
            source,
            patch_args.activation,
            report["count"],
            kept,
        )
        return report
    if calibrates(patch_args):
        from crrelu_llm.patching.calibration import calibrate

        return calibrate(
            model,
            tokenizer,
            calibration_pairs,
            lambda kwargs=patch_args.activation_kwargs: patch_model(
                model,
                activation=patch_args.activation,
                layers=patch_args.patch_layers,
                activation_kwargs=kwargs,
            ),
            patch_args.activation,
        ).to_dict()
    return patch_model(
        model,
        activation=patch_args.activation,
        epsilon_init=patch_args.epsilon_init,
        layers=patch_args.patch_layers,
        activation_kwargs=patch_args.activation_kwargs,
    ).to_dict()


def kept_patch_report(model, activation: str, **extra) -> dict:
    """The patch report of a model whose recorded patch the run keeps as it is."""
    record = patch_record(model) or {"modules": {}}
    return {
        "already_patched": True,
        "activation": activation,
        "count": len(record["modules"]),
        "layers": None,
        "modules": record["modules"],
        "epsilon": activation_logs(model),
        **extra,
    }


def already_patched(model, activation: str, layers=None) -> bool:
    """True when the checkpoint's recorded patch already put ``activation`` everywhere a patch of
    ``layers`` (``None``: every block) would put it."""
    record = patch_record(model)
    if not record:
        return False
    recorded = {path for path, entry in record["modules"].items() if entry["activation"] == activation}
    sites = {s.path for s in patch_sites(model, layers)}
    return bool(recorded) and sites <= recorded


def apply_activation_parameter_mode(model, mode: str) -> None:
    """``freeze``: the activation parameters stay as they are; ``only``: they alone train."""
    eps = active_activation_parameters(model)
    if mode == "freeze":
        for p in eps.values():
            p.requires_grad_(False)
    elif mode == "only":
        if not eps:
            raise RecipeError(
                "activation_parameters: only trains the activation's parameters alone: it needs an activation "
                "that has some (crrelu, swish_beta, or a class with nn.Parameters)"
            )
        for p in model.parameters():
            p.requires_grad_(False)
        for p in eps.values():
            p.requires_grad_(True)


def trusts_code(training_args) -> bool:
    """The recipe's ``trust_remote_code`` (TRL keeps it with the training arguments)."""
    return bool(getattr(training_args, "trust_remote_code", False))


def load_model(model_args, training_args, path: str | None = None, *, seeded: bool = False):
    """The one loader of a training run's models: ``path`` (default: the recipe's model) in the
    recipe's dtype and trust; ``seeded`` builds a ``tiny-*`` model with the run's seed (the
    policy and its copies)."""
    seed = training_args.seed if seeded and training_args is not None else 0
    return load_causal_lm(
        path or model_args.model_name_or_path,
        dtype=model_args.dtype or "auto",
        trust_remote_code=trusts_code(training_args),
        seed=seed,
    )


def load_run_tokenizer(patch_args, model_args, training_args):
    """The run's tokenizer: ``tokenizer_name_or_path``, else the model's."""
    return load_tokenizer(
        patch_args.tokenizer_name_or_path or model_args.model_name_or_path, trusts_code(training_args)
    )


def load_policy(patch_args, model_args, training_args):
    """The model the run trains, as loaded: the checkpoint, or with ``continue_adapter`` a LoRA
    run's own adapter, trainable, on its patched base."""
    if patch_args.refit and model_args.use_peft:
        raise RecipeError(
            "refit: true changes the activations' buffers (mu, sigma, the folded corrections), which a LoRA "
            "adapter run does not rebuild on its base: refit in a full fine-tuning run, or leave refit out"
        )
    if not patch_args.continue_adapter:
        return load_model(model_args, training_args, seeded=True)
    if not (is_adapter_run(model_args.model_name_or_path) and model_args.use_peft):
        raise RecipeError(
            "continue_adapter: true trains a LoRA run's adapter further: it needs model_name_or_path "
            "to be a LoRA run (a directory with adapter_config.json) and use_peft: true"
        )
    return load_adapter_run(
        Path(model_args.model_name_or_path),
        dtype=model_args.dtype or "auto",
        trust_remote_code=trusts_code(training_args),
        merge=False,
        trainable=True,
    )


def unpatched_original(objective, model, patch_args, model_args, training_args):
    """The model as loaded, before the patch, where the run needs it (a DPO or KTO reference of
    ``reference: original``, or a distillation teacher that is the original); else None."""
    needed = (objective.reference and patch_args.reference == "original") or (
        objective.name == "distill" and not training_args.teacher_model_name_or_path
    )
    if not needed:
        return None
    return load_policy(patch_args, model_args, training_args) if deepspeed_zero3_enabled() else copy.deepcopy(model)


def patch_policy(model, patch_args, model_args, tokenizer, train_data) -> dict | None:
    """Patch ``model`` as a training run of this recipe does (the patch report, or None for the
    baseline); ``epsilon_init: calibrate`` calibrates on the run's own first training rows. The
    one path from a recipe to a patched model: training runs and an experiment's step 0 use it.
    A LoRA run's adapter trained further keeps its base's patch and the adapter's parameters."""
    if patch_args.continue_adapter:
        return kept_patch_report(model, patch_args.activation, continued_adapter=model_args.model_name_or_path)
    pairs = calibration_pairs(train_data, patch_args.calibration_samples) if calibrates(patch_args) else None
    return apply_recipe_patch(model, patch_args, model_args.model_name_or_path, tokenizer, pairs)


def patch_line(report: dict | None, source: str) -> str:
    """What the patch did, in one line: ``patched 4 modules: NewGELUActivation -> CRReLU, eps 0.01``."""
    if report is None:
        return f"not patched: {source} trains with its own activations (activation: none)"
    if report.get("already_patched"):
        return (
            f"not patched again: {source} already has {report['activation']} in {report['count']} modules "
            "(kept with its trained parameters)"
        )
    kinds = Counter((r["old_type"], r["new_type"]) for r in report.get("replaced", []))
    what = ", ".join(f"{old} -> {new}" + (f" ({n})" if len(kinds) > 1 else "") for (old, new), n in kinds.items())
    init = report.get("epsilon_init")
    calibrated = report.get("calibrated_epsilons") or report.get("calibrated")
    eps = f", eps {init}" if init is not None else ", calibrated per layer" if calibrated else ""
    return f"patched {report['count']} modules: {what or 'none'}{eps}"


def gradual_swap(model, originals: dict, patch_report: dict | None, swap_steps: int) -> list:
    """``swap_steps``: blend the patched activations in from the originals over the first steps;
    the callback that moves the blend (first among the run's callbacks, before any that reads it)."""
    if not originals or not patch_report or patch_report.get("already_patched"):
        return []
    blended = blend_in(model, originals)
    logger.info("gradual swap: %d module(s) blended in over the first %d steps", blended, swap_steps)
    return [SwapScheduleCallback(swap_steps)]


def originals_for_swap(model, patch_args) -> dict:
    """The activations the gradual swap blends from (taken before the patch); {} without one."""
    return original_activations(model) if patch_args.swap_steps else {}


def reference_and_teacher(objective, model, original, patch_args, model_args, training_args):
    """The trainer's extra models (``ref_model``, ``teacher``) and what ``reference.json`` says."""
    models, info = {}, None
    if objective.name == "distill":
        teacher = training_args.teacher_model_name_or_path
        models["teacher"] = original if not teacher else load_model(model_args, training_args, teacher)
        if patch_record(models["teacher"]):
            raise RecipeError(
                f"the distillation teacher ({teacher or model_args.model_name_or_path}) is already "
                "patched: distil from the original model (set teacher_model_name_or_path)"
            )
    if objective.preference and not objective.reference:
        info = reference_free_info(objective.name)
        logger.info("%s: %s", objective.name, info["source"])
    if objective.reference:
        ref, info = build_reference(
            patch_args.reference,
            lambda: policy_copy(model, patch_args, model_args, training_args),
            original,
            model_args,
            training_args,
        )
        if training_args.deepspeed_plugin is not None:  # as the policy: (1,)-shaped parameters
            hold_scalars_as_vectors(ref)
        info["precompute_ref_log_probs"] = training_args.precompute_ref_log_probs
        info["peft"] = bool(model_args.use_peft)
        models["ref_model"] = ref  # always explicit: TRL's implicit choices differ by setting
        logger.info("%s reference: %s", objective.name.upper(), info["source"])
    return models, info


def policy_copy(model, patch_args, model_args, training_args):
    """The patched policy as it is at the start of training, as a separate model."""
    if patch_args.continue_adapter:  # the policy at the start is the run's adapter merged: a plain model for TRL
        return load_model(model_args, training_args)
    if not deepspeed_zero3_enabled():
        return copy.deepcopy(model)
    fresh = load_model(model_args, training_args, seeded=True)
    record = patch_record(model)
    if record:  # the policy's patch as recorded: calibrated eps and measured mu, sigma included
        restore_patch(base_model(fresh), record)
        setattr(base_model(fresh).config, PATCH_CONFIG_KEY, copy.deepcopy(record))
    return fresh


def build_reference(choice: str, policy_copy, original, model_args, training_args=None):
    """The reference model, frozen, and a description for the run's outputs. ``policy_copy()``
    makes a copy of the patched policy as it is at the start; ``original`` is the unpatched
    model (needed for ``choice == "original"``); any other choice is a checkpoint path."""
    if choice == "policy":
        ref, source = policy_copy(), "the patched policy as it is at the start of DPO"
    elif choice == "original":
        ref, source = original, f"the unpatched original ({model_args.model_name_or_path})"
    else:
        if not Path(choice).exists():
            raise RecipeError(f"reference: {choice!r} is neither 'policy', 'original' nor an existing checkpoint path")
        ref, source = load_model(model_args, training_args, choice), f"the checkpoint at {choice}"
    ref.eval().requires_grad_(False)
    return ref, {"reference": choice, "source": source, "activations": activation_summary(ref)}


def with_peft(model, patch_args, model_args):
    """``use_peft``: the model wrapped by PEFT (LoRA per TRL's ``get_peft_config``), the
    activation parameters trained in full beside the adapter unless they are frozen."""
    if not model_args.use_peft or patch_args.continue_adapter:
        return model
    from peft import get_peft_model
    from trl import get_peft_config

    targets = model_args.lora_target_modules
    if isinstance(targets, str) and targets != "all-linear" and re.fullmatch(r"[\w.]+", targets):
        # TRL's ModelConfig turns a one-element list into a string, which PEFT reads as a regex
        # that must match the whole module path: `[c_attn]` would then target nothing.
        model_args.lora_target_modules = [targets]
    peft_config = get_peft_config(model_args)
    extra = peft_modules_to_save(model) if patch_args.activation_parameters != "freeze" else []
    peft_config.modules_to_save = list(peft_config.modules_to_save or []) + extra
    return get_peft_model(model, peft_config)
