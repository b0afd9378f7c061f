"""Calibrated activations (``epsilon_init: calibrate``): each new activation's parameters set to
the least-squares values that bring it closest to the activation it replaced, on the unpatched
model's own pre-activations over calibration text.

CRReLU's eps has a closed form, accumulated over every token
(:func:`crrelu_llm.patching.probe.calibrated_epsilons`). Any other class takes part by defining
``least_squares_init(self, x, target)``, which sets its parameters from a sample of the layer's
pre-activations ``x`` (a uniform sample of up to 65 536 values per layer, each sequence's first
position left out) and the original activation's outputs ``target`` on them
(:class:`~crrelu_llm.ops.candidates.SwishBeta` does, by a line search).

``matched_<base>`` (:class:`~crrelu_llm.ops.candidates.MatchedActivation`) is measured the same
way: each layer's mu and sigma are the robust location and scale of that sample, and its eps
starts at 0."""

from __future__ import annotations

import logging

import torch
from torch import nn

from crrelu_llm.errors import RecipeError
from crrelu_llm.ops.activation import CRReLU
from crrelu_llm.ops.candidates import MatchedActivation
from crrelu_llm.patching.discovery import UNMEASURED, base_model, needs_measurement
from crrelu_llm.patching.probe import Reservoir, calibrated_epsilons, without_first_position
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


@torch.no_grad()
def _preactivation_samples(model: nn.Module, tokenizer, pairs) -> dict[str, tuple]:
    """Per feed-forward activation of the unpatched ``model``: (inputs, outputs), a uniform sample
    of up to :data:`~crrelu_llm.patching.probe.SAMPLE` values over the non-padding tokens of
    ``pairs`` other than each sequence's first (where massive activations sit)."""
    from crrelu_llm.data.encoding import encode_pairs, ensure_pad_token, model_device
    from crrelu_llm.patching.discovery import find_activations

    ensure_pad_token(tokenizer)
    paths = [s.path for s in find_activations(model) if s.feed_forward]
    samples, mask = {p: Reservoir() for p in paths}, {}

    def keep(path):
        def hook(module, inputs, output):
            tokens = mask["tokens"].to(output.device)
            samples[path].add(inputs[0][tokens], output[tokens])

        return hook

    handles = [model.get_submodule(p).register_forward_hook(keep(p)) for p in paths]
    try:
        for start in range(0, len(pairs), 8):
            ids, attention, _ = encode_pairs(tokenizer, pairs[start : start + 8], 1024)
            mask["tokens"] = without_first_position(attention)
            model(input_ids=ids.to(model_device(model)), attention_mask=attention.to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return {p: tuple(r.values) for p, r in samples.items() if r.values}


def calibrate(model: nn.Module, tokenizer, pairs, patch, activation: str = "crrelu"):
    """Calibrate the ``activation`` that ``patch(activation_kwargs=...)`` puts into ``model`` (see
    the module docstring): CRReLU by its closed form over every token (:func:`calibrate_crrelu`);
    ``matched_<base>`` by measuring each layer's mu and sigma (:func:`set_measured`); any class
    with ``least_squares_init`` on samples."""
    if activation == "crrelu":
        return calibrate_crrelu(model, tokenizer, pairs, patch)
    samples = _preactivation_samples(model, tokenizer, pairs)
    if needs_measurement(activation):
        report = patch(UNMEASURED)
        report.activation_kwargs = None  # per layer, below
        report.calibrated = set_measured(model, {path: x for path, (x, _) in samples.items()})
        logger.info("measured %s: %s", report.activation, report.calibrated)
        return report
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


def set_measured(model: nn.Module, measured: dict) -> dict[str, dict[str, float]]:
    """Give each ``matched_<base>`` module of ``model`` its layer's mu and sigma, and record them
    in the patch record (so that a checkpoint rebuilds the same function). ``measured``: module
    path -> a sample of its inputs, or the ``{"mu", "sigma"}`` already measured (a LoRA run's
    base, rebuilt from its ``patch_report.json``). Returns path -> ``{"mu", "sigma"}``."""
    record, fits = patch_record(model), {}
    for path, value in measured.items():
        module = model.get_submodule(path)
        if not isinstance(module, MatchedActivation):
            continue
        if isinstance(value, dict):
            with torch.no_grad():
                module.mu.fill_(value["mu"])
                module.sigma.fill_(value["sigma"])
                if value.get("folded"):
                    module.folded = torch.tensor(value["folded"]).to(module.folded).reshape(-1, 3)
            fits[path] = {"mu": float(value["mu"]), "sigma": float(value["sigma"])}
            fits[path].update({"folded": value["folded"]} if value.get("folded") else {})
        else:
            fits[path] = module.measure(value)
        record["modules"][path]["activation_kwargs"] = dict(fits[path])
    setattr(base_model(model).config, PATCH_CONFIG_KEY, record)
    return fits


def refit(model: nn.Module, tokenizer, pairs) -> dict[str, dict]:
    """The paper's "dynamic" variant, between stages: each ``matched_<base>`` module of an already
    patched ``model`` folds its learned correction into its base, has its mu and sigma measured
    again on its inputs now (over ``pairs``, as :func:`calibrate` measures) and its eps reset to 0
    (:meth:`~crrelu_llm.ops.candidates.MatchedActivation.refit`). The model computes the same
    function before and after; the patch record follows. Returns path -> the new mu, sigma, folded."""
    samples = _preactivation_samples(model, tokenizer, pairs)
    record, fits = patch_record(model), {}
    for path, (x, _) in samples.items():
        module = model.get_submodule(path)
        if isinstance(module, MatchedActivation):
            fits[path] = module.refit(x)
            record["modules"][path]["activation_kwargs"] = dict(fits[path])
    setattr(base_model(model).config, PATCH_CONFIG_KEY, record)
    logger.info("refit: %s", fits)
    return fits


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
