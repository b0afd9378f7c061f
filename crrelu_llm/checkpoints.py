"""Checkpoints on disk: what a model's activation modules are, and patching one into a new directory."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .errors import ModelLoadError
from .files import refuse_existing, writable_dir, write_directory_atomic, write_json
from .loading import load_causal_lm, load_config, load_tokenizer
from .patch import PatchReport, find_activations, make_activation, patch_model, patch_record

logger = logging.getLogger("crrelu_llm.checkpoints")


def inspect_model(model: str, trust_remote_code: bool = False) -> dict:
    """The activation modules of ``model`` and whether a patch would replace each, built on the
    meta device from the config alone (no weights are downloaded or allocated)."""
    from transformers import AutoModelForCausalLM

    config = load_config(model, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return {"model": model, "model_class": type(built).__name__,
            "activations": [vars(s) for s in find_activations(built)], "patch_record": patch_record(built)}


def patch_checkpoint(model: str, out: Path, activation: str = "crrelu", epsilon_init: float = 0.01,
                     layers: list[int] | None = None, dtype: str = "auto", trust_remote_code: bool = False,
                     overwrite: bool = False) -> PatchReport:
    """Load ``model``, patch it, and write it with its tokenizer and ``patch_report.json`` to
    ``out``, which appears only once complete. An existing ``out`` is replaced only with
    ``overwrite``."""
    make_activation(activation, epsilon_init)  # a bad name fails before any download
    out = Path(out)
    refuse_existing(out, overwrite)  # both before any download
    writable_dir(out.parent)
    loaded = load_causal_lm(model, dtype=dtype, trust_remote_code=trust_remote_code)
    report = patch_model(loaded, activation=activation, epsilon_init=epsilon_init, layers=layers)
    try:
        tokenizer = load_tokenizer(model, trust_remote_code)
    except ModelLoadError:
        tokenizer = None
        logger.warning("no tokenizer found for %s; the checkpoint holds the model only", model)

    def write(tmp: Path) -> None:
        loaded.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / "patch_report.json", report.to_dict())

    write_directory_atomic(out, overwrite, write)
    return report
