"""Calibrated eps (``epsilon_init: calibrate``): each CRReLU's eps set to the least-squares value
that brings it closest to the activation it replaced, on the unpatched model's own
pre-activations over calibration text (:func:`crrelu_llm.patching.probe.calibrated_epsilons`)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from crrelu_llm.errors import RecipeError
from crrelu_llm.ops.activation import CRReLU
from crrelu_llm.patching.probe import calibrated_epsilons
from crrelu_llm.patching.record import PATCH_CONFIG_KEY, patch_record

logger = logging.getLogger("crrelu_llm.recovery")


def calibration_pairs(dataset, n: int) -> list[tuple[str, str]]:
    """(prompt, response) text of the first ``n`` rows of SFT or preference data."""
    pairs = []
    for row in dataset.select(range(min(n, len(dataset)))):
        if isinstance(row.get("text"), str):
            pairs.append(("", row["text"]))
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion", row.get("chosen")), str):
            pairs.append((row["prompt"], row.get("completion", row.get("chosen"))))
        else:
            raise RecipeError("epsilon_init: calibrate needs text rows (text, prompt+completion or prompt+chosen "
                              "strings); conversational rows are not supported for calibration")
    return pairs


def calibrate(model: nn.Module, tokenizer, pairs, patch):
    """Calibrated eps per feed-forward activation of the unpatched ``model``; then ``patch()``
    patches it (returning its :class:`~crrelu_llm.patching.patch.PatchReport`), and each new CRReLU gets
    its layer's value, recorded in the report and the config's patch record."""
    values = calibrated_epsilons(model, tokenizer, pairs)
    report = patch()
    record = patch_record(model)
    with torch.no_grad():
        for path, value in values.items():
            module = model.get_submodule(path)
            if isinstance(module, CRReLU):
                module.epsilon.fill_(value)
                module.epsilon_init = value
                record["modules"][path]["epsilon_init"] = value
    setattr(model.config, PATCH_CONFIG_KEY, record)
    report.epsilon_init = None  # per layer, below
    report.calibrated_epsilons = {path: value for path, value in values.items()
                                  if isinstance(model.get_submodule(path), CRReLU)}
    logger.info("calibrated eps: %s", ", ".join(f"{v:.4f}" for v in report.calibrated_epsilons.values()))
    return report
