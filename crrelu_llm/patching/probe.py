"""Activation probes: what each feed-forward activation sees and does, per layer.

    crrelu-llm probe runs/demo/crrelu/sft --data runs/demo/data [--original runs/demo/original]

For every feed-forward activation module (found as the patcher finds them) and over the
non-padding tokens of real text, the probe records:

- the input's mean, sd, skewness, excess kurtosis and share negative, and the Jarque-Bera
  statistic ``n/6 (S^2 + K^2/4)`` as a normality measure (CRReLU's derivation assumes Gaussian
  inputs; with n in the millions any departure is "significant", so compare its size across
  layers and arms rather than reading a P-value);
- the output's sparsity: the share of exact zeros and of ``|y| < 1e-3``;
- the learned ``epsilon`` (CRReLU, corrected and matched modules), and every learned parameter of
  any patched class (``parameters``: scalars as values, tensors as norms);
- the least-squares ``epsilon``: the value that brings CRReLU closest, in squared error, to the
  original activation on these very inputs, ``sum(g d) / sum(g^2)`` with
  ``d = original(x) - relu(x)`` and ``g = x exp(-x^2/2)``. The original activation is the module
  itself for an unpatched model, the module at the same path of ``--original``, or the class
  the patch record names;
- the paper's mechanism (:mod:`crrelu_llm.ops.entropy`), for an activation with a base (CRReLU,
  ``corrected_<base>``, ``matched_<base>``): ``entropy_change``, the exact output-entropy change
  against the base over the inputs above its turning point (``entropy_change_share`` of them,
  ``entropy_change_folded`` of those where the arm turns back); ``entropy_change_binned`` over
  the rest (``entropy_change_binned_share``); and ``correction_cosine``, the correction's shape
  against EAFO's entropy-lowering direction for the inputs' Gaussian fit (``input_median``,
  ``input_scale``: median and IQR/1.349). These three
  use a uniform sample of up to 65 536 inputs per layer without each sequence's first position;
  ``buffers`` holds a matched activation's mu and sigma.

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
from crrelu_llm.ops.activation import CRReLU, correction_term, is_patched_activation
from crrelu_llm.ops.candidates import CorrectedActivation, MatchedActivation, robust_location_scale
from crrelu_llm.ops.entropy import base_of, binned_entropy_change, correction_cosine, entropy_change
from crrelu_llm.patching.discovery import find_activations
from crrelu_llm.patching.patch import epsilon_tensor, parameter_value
from crrelu_llm.patching.record import patch_record

logger = logging.getLogger("crrelu_llm.probe")
SMALL = 1e-3
SAMPLE = 1 << 16  # values per layer kept for the measures that need a sample (calibration, cosine, binned)


class Reservoir:
    """A uniform sample without replacement of up to ``size`` values seen over many batches (with
    aligned companions: a layer's outputs beside its inputs). Every value draws a key from a seeded
    generator and the smallest ``size`` keys are kept, so the sample is the same on every run and
    does not depend on how the text was batched into calls.

    Example::

        >>> import torch
        >>> r = Reservoir(size=3)
        >>> r.add(torch.arange(10.0), torch.arange(10.0) * 2)
        >>> x, y = r.values
        >>> len(x), bool(torch.equal(y, 2 * x))
        (3, True)
    """

    def __init__(self, size: int = SAMPLE, seed: int = 0):
        self.size, self.generator = size, torch.Generator().manual_seed(seed)
        self.keys, self.values = None, []

    def add(self, *tensors: torch.Tensor) -> None:
        flat = [t.detach().float().flatten().cpu() for t in tensors]
        keys = torch.rand(flat[0].numel(), generator=self.generator)
        if self.keys is not None:
            keys, flat = torch.cat([self.keys, keys]), [torch.cat([old, new]) for old, new in zip(self.values, flat)]
        if keys.numel() > self.size:
            kept = torch.topk(keys, self.size, largest=False).indices
            keys, flat = keys[kept], [f[kept] for f in flat]
        self.keys, self.values = keys, flat


def without_first_position(attention: torch.Tensor) -> torch.Tensor:
    """The non-padding tokens of right-padded rows other than each row's first: position 0 is the
    attention sink, where massive activations live (``../shared/eafo/NOTES.md`` §2.3)."""
    keep = attention.bool().clone()
    keep[:, 0] = False
    return keep


class _Accumulator:
    """Running sums over one activation's inputs and outputs, in float64."""

    def __init__(self):
        self.n = 0
        self.sums = torch.zeros(4, dtype=torch.float64)  # x, x^2, x^3, x^4
        self.negative = self.zero = self.small = 0
        self.gd = self.gg = 0.0
        self.entropy, self.covered, self.folded = None, 0, 0  # Σ log-ratio above the base's s*, how many, folded
        self.sample = Reservoir()  # inputs, each sequence's first position left out

    def add(self, x: torch.Tensor, y: torch.Tensor, reference, module=None, sample=None) -> None:
        if sample is not None:
            self.sample.add(sample)
        change = entropy_change(module, x) if module is not None else None
        if change is not None:
            self.entropy = (self.entropy or 0.0) + change[0]
            self.covered += change[1]
            self.folded += change[2]
        x, y = x.detach().double(), y.detach().double()
        self.n += x.numel()
        powers = torch.stack([x.sum(), (x**2).sum(), (x**3).sum(), (x**4).sum()])
        self.sums += powers.cpu()
        self.negative += int((x < 0).sum())
        self.zero += int((y == 0).sum())
        self.small += int((y.abs() < SMALL).sum())
        if reference is not None:
            g = correction_term(x)
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
            # of those, the share where the arm is not one-to-one (its derivative turned): not exact there
            "entropy_change_folded": self.folded / self.covered if self.entropy is not None and self.covered else None,
        }

    def against_theory(self, module) -> dict:
        """On the sample: the inputs' robust Gaussian fit, the binned entropy change below the
        base's turning point, and the cosine of the correction's shape with EAFO's direction
        (:mod:`crrelu_llm.ops.entropy`)."""
        if not self.sample.values or self.sample.values[0].numel() < 2:
            return {}
        x = self.sample.values[0].double()
        median, scale = robust_location_scale(x)
        out = {"input_median": median, "input_scale": scale}
        binned = binned_entropy_change(module, x) if module is not None else None
        if binned is not None or (module is not None and base_of(module) is not None):
            out["entropy_change_binned"] = binned[0] if binned else None
            out["entropy_change_binned_share"] = binned[1] / x.numel() if binned else 0.0
            out["correction_cosine"] = correction_cosine(module, x, median, scale)
        return out


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
            sample = inputs[0][mask["sample"].to(output.device)]
            accumulators[path].add(inputs[0][keep], output[keep], references[path], module, sample)

        return record

    handles = [model.get_submodule(path).register_forward_hook(hook(path)) for path in references]
    try:
        device = model_device(model)
        for start in tqdm(range(0, len(pairs), batch_size), desc="Probing activations", leave=False):
            ids, attention, _ = encode_pairs(tokenizer, pairs[start : start + batch_size], max_length)
            mask["tokens"], mask["sample"] = attention.bool(), without_first_position(attention)
            model(input_ids=ids.to(device), attention_mask=attention.to(device))
    finally:
        for handle in handles:
            handle.remove()
    from crrelu_llm.patching.discovery import layer_index

    layers = []
    for path, acc in accumulators.items():
        module = model.get_submodule(path)
        corrected = isinstance(module, (CRReLU, CorrectedActivation, MatchedActivation))
        learned = float(epsilon_tensor(module.epsilon).float()) if corrected else None
        reference = references[path]
        layers.append(
            {
                "path": path,
                "layer": layer_index(path),
                "module_type": type(module).__name__,
                "original_type": type(reference).__name__ if reference is not None else None,
                "epsilon": learned,
                "parameters": {n: parameter_value(p) for n, p in module.named_parameters(recurse=False)},
                # fixed values the activation holds (matched_<base>: its measured mu and sigma)
                "buffers": {n: float(b.float()) for n, b in module.named_buffers(recurse=False) if b.numel() == 1},
                **acc.summary(),
                **acc.against_theory(module),
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
