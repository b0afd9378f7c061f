"""Checkpoints on disk: what a model's activation modules are, and patching one into a new directory."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from crrelu_llm import run_files
from crrelu_llm.errors import ModelLoadError, UsageError
from crrelu_llm.files import refuse_existing, writable_dir, write_directory_atomic, write_json
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT
from crrelu_llm.patching.discovery import (
    canonical_activation,
    check_activation,
    find_activations,
    needs_measurement,
    supports_calibration,
)
from crrelu_llm.patching.loading import load_causal_lm, load_config, load_tokenizer
from crrelu_llm.patching.patch import patch_model
from crrelu_llm.patching.record import PatchReport, patch_record

logger = logging.getLogger("crrelu_llm.checkpoints")


def inspect_model(model: str, trust_remote_code: bool = False) -> dict:
    """The activation modules of ``model`` and whether a patch would replace each, built on the
    meta device from the config alone (no weights are downloaded or allocated)."""
    from transformers import AutoModelForCausalLM

    config = load_config(model, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return {
        "model": model,
        "model_class": type(built).__name__,
        "activations": [vars(s) for s in find_activations(built)],
        "patch_record": patch_record(built),
    }


def patch_checkpoint(
    model: str,
    out: Path,
    activation: str = "crrelu",
    epsilon_init: float | str = DEFAULT_EPSILON_INIT,
    layers: list[int] | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    overwrite: bool = False,
    calibration_data: str | None = None,
    calibration_samples: int = 64,
    activation_kwargs: dict | None = None,
) -> PatchReport:
    """Load ``model``, patch it, and write it with its tokenizer and ``patch_report.json`` to
    ``out``, which appears only once complete. An existing ``out`` is replaced only with
    ``overwrite``. ``epsilon_init="calibrate"`` sets each eps to its least-squares value on the
    prompts and chosen responses of ``calibration_samples`` rows of ``calibration_data``; a
    ``matched_<base>`` activation measures each layer's mu and sigma on them."""
    activation = canonical_activation(activation)
    measuring = needs_measurement(activation, activation_kwargs)
    calibrating = epsilon_init == "calibrate" or measuring
    # a bad name, class or shape fails before any download
    check_activation(activation, activation_kwargs, DEFAULT_EPSILON_INIT if calibrating else epsilon_init)
    if measuring and not calibration_data:
        raise UsageError(
            f"--activation {activation} measures each layer's inputs (mu, sigma) on text: give "
            "--calibration-data DATA (e.g. the training data), or --activation-kwargs with mu and sigma"
        )
    least_squares = supports_calibration(activation, activation_kwargs)
    if epsilon_init == "calibrate" and (not least_squares or not calibration_data):
        raise UsageError(
            "--epsilon-init calibrate needs an activation with least_squares_init (crrelu, swish_beta) "
            "and --calibration-data DATA (text to calibrate on, e.g. the training data)"
        )
    out = Path(out)
    refuse_existing(out, overwrite)  # both before any download
    writable_dir(out.parent)
    if calibrating:
        from crrelu_llm.data.preference import DataArguments, load_preference_splits
        from crrelu_llm.patching.calibration import calibration_pairs

        train, _, _ = load_preference_splits(DataArguments(dataset_name=calibration_data))
        pairs = calibration_pairs(train, calibration_samples)
    loaded = load_causal_lm(model, dtype=dtype, trust_remote_code=trust_remote_code)
    try:
        tokenizer = load_tokenizer(model, trust_remote_code)
    except ModelLoadError:
        if calibrating:
            raise
        tokenizer = None
        logger.warning("no tokenizer found for %s; the checkpoint holds the model only", model)
    if calibrating:
        from crrelu_llm.patching.calibration import calibrate

        report = calibrate(
            loaded,
            tokenizer,
            pairs,
            lambda kwargs=activation_kwargs: patch_model(
                loaded, activation=activation, layers=layers, activation_kwargs=kwargs
            ),
            activation,
        )
    else:
        report = patch_model(
            loaded, activation=activation, epsilon_init=epsilon_init, layers=layers, activation_kwargs=activation_kwargs
        )

    def write(tmp: Path) -> None:
        loaded.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / run_files.PATCH_REPORT, report.to_dict())

    write_directory_atomic(out, overwrite, write)
    return report
