"""Calibrated activations (``epsilon_init: calibrate``): each new activation's parameters set to
the least-squares values that bring it closest to the activation it replaced, on the unpatched
model's own pre-activations over calibration text.

CRReLU's eps has a closed form, accumulated over every token
(:func:`crrelu_llm.patching.probe.calibrated_epsilons`). Any other class takes part by defining
``least_squares_init(self, x, target)``, which sets its parameters from a sample of the layer's
pre-activations ``x`` (up to :data:`SAMPLE` values per layer) and the original activation's
outputs ``target`` on them (:class:`~crrelu_llm.ops.candidates.SwishBeta` does, by a line search)."""

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
            raise RecipeError(
                "epsilon_init: calibrate needs text rows (text, prompt+completion or prompt+chosen "
                "strings); conversational rows are not supported for calibration"
            )
    return pairs


SAMPLE = 1 << 16


@torch.no_grad()
def _preactivation_samples(model: nn.Module, tokenizer, pairs, limit: int = SAMPLE) -> dict[str, tuple]:
    """Per feed-forward activation of the unpatched ``model``: (inputs, outputs), the first
    ``limit`` values over the non-padding tokens of ``pairs``."""
    from crrelu_llm.data.encoding import encode_pairs, ensure_pad_token, model_device
    from crrelu_llm.patching.discovery import find_activations

    ensure_pad_token(tokenizer)
    paths = [s.path for s in find_activations(model) if s.feed_forward]
    samples, mask = {p: ([], []) for p in paths}, {}

    def keep(path):
        def hook(module, inputs, output):
            xs, ys = samples[path]
            if sum(t.numel() for t in xs) < limit:
                tokens = mask["tokens"].to(output.device)
                xs.append(inputs[0][tokens].detach().float().flatten().cpu())
                ys.append(output[tokens].detach().float().flatten().cpu())

        return hook

    handles = [model.get_submodule(p).register_forward_hook(keep(p)) for p in paths]
    try:
        for start in range(0, len(pairs), 8):
            ids, attention, _ = encode_pairs(tokenizer, pairs[start : start + 8], 1024)
            mask["tokens"] = attention.bool()
            model(input_ids=ids.to(model_device(model)), attention_mask=attention.to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return {p: (torch.cat(xs)[:limit], torch.cat(ys)[:limit]) for p, (xs, ys) in samples.items() if xs}


def calibrate(model: nn.Module, tokenizer, pairs, patch, activation: str = "crrelu"):
    """Calibrate the ``activation`` that ``patch()`` puts into ``model`` (see the module
    docstring): CRReLU by its closed form over every token (:func:`calibrate_crrelu`), any class
    with ``least_squares_init`` on samples."""
    if activation == "crrelu":
        return calibrate_crrelu(model, tokenizer, pairs, patch)
    samples = _preactivation_samples(model, tokenizer, pairs)
    report = patch()
    calibrated = {}
    for path, (x, target) in samples.items():
        module = model.get_submodule(path)
        if callable(getattr(module, "least_squares_init", None)):
            module.least_squares_init(x.to(next(module.parameters()).device), target)
            calibrated[path] = {
                n: float(p.detach().float().reshape(-1)[0]) if p.numel() == 1 else float(p.detach().float().norm())
                for n, p in module.named_parameters()
            }
    report.calibrated = calibrated
    logger.info("calibrated %s: %s", report.activation, calibrated)
    return report


def calibrate_crrelu(model: nn.Module, tokenizer, pairs, patch):
    """Calibrated eps per feed-forward activation of the unpatched ``model``; then ``patch()``
    patches it (returning its :class:`~crrelu_llm.patching.patch.PatchReport`), and each new CRReLU gets
    its layer's value, recorded in the report and the config's patch record."""
    values = calibrated_epsilons(model, tokenizer, pairs)
    return _record_crrelu(model, patch(), values)


def _record_crrelu(model: nn.Module, report, values: dict[str, float]):
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
    report.calibrated_epsilons = {
        path: value for path, value in values.items() if isinstance(model.get_submodule(path), CRReLU)
    }
    logger.info("calibrated eps: %s", ", ".join(f"{v:.4f}" for v in report.calibrated_epsilons.values()))
    return report
