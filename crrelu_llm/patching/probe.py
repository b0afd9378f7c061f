"""Activation probes: what each feed-forward activation sees and does, per layer.

    crrelu-llm probe runs/demo/crrelu/sft --data runs/demo/data [--original runs/demo/original]

For every feed-forward activation module (found as the patcher finds them) and over the
non-padding tokens of real text, the probe records:

- the input's mean, sd, skewness, excess kurtosis and share negative, and the Jarque-Bera
  statistic ``n/6 (S^2 + K^2/4)`` as a normality measure (CRReLU's derivation assumes Gaussian
  inputs; with n in the millions any departure is "significant", so compare its size across
  layers and arms rather than reading a P-value);
- the output's sparsity: the share of exact zeros and of ``|y| < 1e-3``;
- the learned ``epsilon`` (CRReLU modules), and every learned parameter of any patched class
  (``parameters``: scalars as values, tensors as norms);
- the least-squares ``epsilon``: the value that brings CRReLU closest, in squared error, to the
  original activation on these very inputs, ``sum(g d) / sum(g^2)`` with
  ``d = original(x) - relu(x)`` and ``g = x exp(-x^2/2)``. The original activation is the module
  itself for an unpatched model, the module at the same path of ``--original``, or the class
  the patch record names.

The same accumulation, run on the original model, is ``epsilon_init: calibrate``
(:func:`calibrated_epsilons`).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from crrelu_llm.data.encoding import check_tokenizers, encode_pairs, ensure_pad_token, model_device
from crrelu_llm.errors import EvaluationError
from crrelu_llm.ops.activation import CRReLU, is_patched_activation
from crrelu_llm.ops.candidates import CorrectedActivation
from crrelu_llm.ops.entropy import entropy_change
from crrelu_llm.patching.discovery import find_activations
from crrelu_llm.patching.patch import epsilon_tensor, parameter_value
from crrelu_llm.patching.record import patch_record

logger = logging.getLogger("crrelu_llm.probe")
SMALL = 1e-3


class _Accumulator:
    """Running sums over one activation's inputs and outputs, in float64."""

    def __init__(self):
        self.n = 0
        self.sums = torch.zeros(4, dtype=torch.float64)  # x, x^2, x^3, x^4
        self.negative = self.zero = self.small = 0
        self.gd = self.gg = 0.0
        self.entropy, self.covered = None, 0  # Σ log-ratio of derivatives above the base's s*, and how many

    def add(self, x: torch.Tensor, y: torch.Tensor, reference, module=None) -> None:
        change = entropy_change(module, x) if module is not None else None
        if change is not None:
            self.entropy = (self.entropy or 0.0) + change[0]
            self.covered += change[1]
        x, y = x.detach().double(), y.detach().double()
        self.n += x.numel()
        powers = torch.stack([x.sum(), (x**2).sum(), (x**3).sum(), (x**4).sum()])
        self.sums += powers.cpu()
        self.negative += int((x < 0).sum())
        self.zero += int((y == 0).sum())
        self.small += int((y.abs() < SMALL).sum())
        if reference is not None:
            g = x * torch.exp(-x * x / 2)
            d = reference.forward(x) - torch.relu(x)  # forward: no hooks (it may be the probed module)
            self.gd += float((g * d).sum())
            self.gg += float((g * g).sum())

    def least_squares_epsilon(self) -> float | None:
        return self.gd / self.gg if self.gg > 0 else None

    def summary(self) -> dict:
        n = self.n
        s1, s2, s3, s4 = (float(v) / n for v in self.sums)
        var = max(s2 - s1 * s1, 0.0)
        m3 = s3 - 3 * s1 * s2 + 2 * s1**3
        m4 = s4 - 4 * s1 * s3 + 6 * s1 * s1 * s2 - 3 * s1**4
        sd = math.sqrt(var)
        skew = m3 / sd**3 if sd > 0 else float("nan")
        kurt = m4 / var**2 - 3 if var > 0 else float("nan")
        return {
            "n": n,
            "mean": s1,
            "sd": sd,
            "skewness": skew,
            "excess_kurtosis": kurt,
            "share_negative": self.negative / n,
            "jarque_bera": n / 6 * (skew**2 + kurt**2 / 4),
            "output_zero": self.zero / n,
            "output_small": self.small / n,
            "least_squares_epsilon": self.least_squares_epsilon(),
            # the paper's mechanism: the output entropy the correction adds to its base's, exactly, in
            # nats, over the inputs where both are one-to-one (that share beside it; ops/entropy.py)
            "entropy_change": self.entropy / self.covered if self.entropy is not None and self.covered else None,
            "entropy_change_share": self.covered / n if self.entropy is not None else None,
        }


def _recorded_original(class_name: str):
    """An instance of the activation class a patch record names, if it can be built bare."""
    import transformers.activations as hf_activations

    for namespace in (hf_activations, nn):
        cls = getattr(namespace, class_name, None)
        if isinstance(cls, type):
            try:
                return cls()
            except TypeError:
                return None
    return None


def reference_activations(model: nn.Module, original: nn.Module | None = None) -> dict[str, nn.Module | None]:
    """Per feed-forward activation path: the original activation to compare CRReLU with."""
    record = (patch_record(model) or {}).get("modules", {})
    refs = {}
    for site in find_activations(model):
        if not site.feed_forward:
            continue
        if original is not None:
            try:
                refs[site.path] = original.get_submodule(site.path)
            except AttributeError:
                raise EvaluationError(
                    f"the original model has no module {site.path}: is it the model this one was patched from?"
                ) from None
        elif site.path in record:
            refs[site.path] = _recorded_original(record[site.path]["original"])
        else:  # unpatched: the activation itself; CRReLU with no record of what it replaced: unknown
            module = model.get_submodule(site.path)
            refs[site.path] = None if is_patched_activation(module) else module
    return refs


@torch.no_grad()
def activation_statistics(
    model: nn.Module,
    tokenizer,
    pairs: list[tuple[str, str]],
    references: dict[str, nn.Module | None],
    max_length: int = 1024,
    batch_size: int = 8,
) -> list[dict]:
    """Statistics per feed-forward activation (see the module docstring) over the non-padding
    tokens of ``pairs`` (prompt, response), in module order."""
    if not pairs:
        raise EvaluationError("no text to probe the activations with")
    check_tokenizers(tokenizer, model)
    ensure_pad_token(tokenizer)
    accumulators = {path: _Accumulator() for path in references}
    mask = {}

    def hook(path):
        def record(module, inputs, output):
            keep = mask["tokens"].to(output.device)
            accumulators[path].add(inputs[0][keep], output[keep], references[path], module)

        return record

    handles = [model.get_submodule(path).register_forward_hook(hook(path)) for path in references]
    try:
        device = model_device(model)
        for start in tqdm(range(0, len(pairs), batch_size), desc="Probing activations", leave=False):
            ids, attention, _ = encode_pairs(tokenizer, pairs[start : start + batch_size], max_length)
            mask["tokens"] = attention.bool()
            model(input_ids=ids.to(device), attention_mask=attention.to(device))
    finally:
        for handle in handles:
            handle.remove()
    from crrelu_llm.patching.discovery import layer_index

    layers = []
    for path, acc in accumulators.items():
        module = model.get_submodule(path)
        learned = (
            float(epsilon_tensor(module.epsilon).float()) if isinstance(module, (CRReLU, CorrectedActivation)) else None
        )
        reference = references[path]
        layers.append(
            {
                "path": path,
                "layer": layer_index(path),
                "module_type": type(module).__name__,
                "original_type": type(reference).__name__ if reference is not None else None,
                "epsilon": learned,
                "parameters": {n: parameter_value(p) for n, p in module.named_parameters(recurse=False)},
                **acc.summary(),
            }
        )
    return layers


def calibrated_epsilons(
    original: nn.Module, tokenizer, pairs, max_length: int = 1024, batch_size: int = 8
) -> dict[str, float]:
    """The least-squares CRReLU ``epsilon`` per feed-forward activation of the unpatched
    ``original``, on its own pre-activations over ``pairs`` (``epsilon_init: calibrate``)."""
    if patch_record(original):
        raise EvaluationError("calibration needs the original, unpatched model: this one is already patched")
    layers = activation_statistics(original, tokenizer, pairs, reference_activations(original), max_length, batch_size)
    missing = [layer["path"] for layer in layers if layer["least_squares_epsilon"] is None]
    if missing:
        raise EvaluationError(f"cannot calibrate {missing[0]}: its inputs were all zero on the calibration text")
    return {layer["path"]: layer["least_squares_epsilon"] for layer in layers}
