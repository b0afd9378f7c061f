"""The models of a training run: the recipe's patch, the eps mode, and the DPO reference."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from crrelu_llm.errors import RecipeError
from crrelu_llm.patching.discovery import find_activations
from crrelu_llm.patching.loading import load_causal_lm
from crrelu_llm.patching.patch import (
    activation_logs,
    activation_parameters,
    active_activation_parameters,
    patch_model,
    patch_sites,
)
from crrelu_llm.patching.record import patch_record

logger = logging.getLogger("crrelu_llm.train")


def activation_summary(model) -> dict[str, int]:
    return dict(Counter(s.module_type for s in find_activations(model) if s.feed_forward))


def build_reference(choice: str, policy_copy, original, model_args):
    """The DPO reference: a frozen model, and a description for the run's outputs.
    ``policy_copy()`` makes a copy of the patched policy as it is at the start of DPO;
    ``original`` is the unpatched model (needed for ``choice == "original"``)."""
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
    return ref, {"reference": choice, "source": source, "activations": activation_summary(ref)}


def apply_recipe_patch(model, crrelu_args, source: str, tokenizer=None, calibration_pairs=None) -> dict | None:
    """Patch ``model`` as the recipe says; the patch report (None for the unpatched baseline).
    ``epsilon_init: calibrate`` calibrates eps on ``calibration_pairs`` (text) first."""
    if crrelu_args.activation is None:
        return None
    if already_patched(model, crrelu_args.activation, crrelu_args.patch_layers):
        # e.g. DPO starting from an SFT checkpoint of this project: re-patching would reset the
        # epsilons it learned, so keep them and say so.
        record = patch_record(model)
        kept = "its modules and trained parameters" if activation_parameters(model) else "its modules"
        logger.warning("%s is already patched with %s (%d modules): keeping %s",
                       source, crrelu_args.activation, len(record["modules"]), kept)
        return {"already_patched": True, "activation": crrelu_args.activation, "count": len(record["modules"]),
                "layers": None, "modules": record["modules"], "epsilon": activation_logs(model)}
    if crrelu_args.epsilon_init == "calibrate":
        from crrelu_llm.patching.calibration import calibrate

        return calibrate(model, tokenizer, calibration_pairs, lambda: patch_model(
            model, activation=crrelu_args.activation, layers=crrelu_args.patch_layers,
            activation_kwargs=crrelu_args.activation_kwargs), crrelu_args.activation).to_dict()
    return patch_model(model, activation=crrelu_args.activation, epsilon_init=crrelu_args.epsilon_init,
                       layers=crrelu_args.patch_layers, activation_kwargs=crrelu_args.activation_kwargs).to_dict()


def already_patched(model, activation: str, layers=None) -> bool:
    """True when the checkpoint's recorded patch already put ``activation`` everywhere a patch of
    ``layers`` (``None``: every block) would put it."""
    record = patch_record(model)
    if not record:
        return False
    recorded = {path for path, entry in record["modules"].items() if entry["activation"] == activation}
    sites = {s.path for s in patch_sites(model, layers)}
    return bool(recorded) and sites <= recorded


def apply_epsilon_mode(model, mode: str) -> None:
    """``freeze``: the activation parameters stay as they are; ``only``: they alone train."""
    eps = active_activation_parameters(model)
    if mode == "freeze":
        for p in eps.values():
            p.requires_grad_(False)
    elif mode == "only":
        if not eps:
            raise RecipeError("epsilon_mode: only trains the activation's parameters alone: it needs an activation "
                              "that has some (crrelu, swish_beta, or a class with nn.Parameters)")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in eps.values():
            p.requires_grad_(True)
