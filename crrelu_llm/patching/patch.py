"""Put CRReLU (or any transformers activation) into a pretrained causal LM.

Activation modules are found by *type* (the classes transformers' ``ACT2CLS`` builds, the
activations of ``torch.nn``, and parameter-free leaf modules whose class name says they are
an activation, like BLOOM's hard-coded ``BloomGelu``), then kept only where they sit in a
feed-forward block: attention, state-space mixers, routers, heads and vision/audio towers are
left alone. The patch is recorded in ``config.crrelu_llm_patch`` so that, once
``crrelu_llm`` is imported, ``from_pretrained``/``from_config`` rebuild the same modules
before the weights (and the learned ``epsilon`` values) are loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from crrelu_llm.errors import NoActivationFoundError, PatchError
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT, CRReLU, is_patched_activation, mark_patched
from crrelu_llm.ops.distributed import full_parameter
from crrelu_llm.patching.discovery import (
    ActivationSite,
    base_model,
    canonical_activation,
    check_activation,
    count_blocks,
    find_activations,
    layer_index,
    make_activation,
    measurement_needed_error,
    needs_measurement,
    placement,
    set_submodule,
)
from crrelu_llm.patching.record import PatchReport, ReplacedModule, name_activation_in_config, record_patch


def _normalise_layers(layers, num_blocks: int | None) -> list[int] | None:
    if layers is None:
        return None
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if isinstance(layers, str) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of block indices or None, got {layers!r}")
    layers = list(layers)
    if not layers:
        raise PatchError("layers is empty: give block indices, or None to patch every block")
    if num_blocks is None:
        raise PatchError("layers was given but this model's activations are not in numbered blocks")
    out = []
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"layers must hold integers, got {index!r}")
        if not -num_blocks <= index < num_blocks:
            raise PatchError(
                f"layer index {index} is out of range: the model has {num_blocks} blocks "
                f"(indices 0..{num_blocks - 1}, or negative from the end)"
            )
        out.append(index % num_blocks)
    return sorted(set(out))


def patch_sites(model: nn.Module, layers=None) -> list[ActivationSite]:
    """The feed-forward activation sites a patch of ``layers`` (``None``: every block) replaces."""
    root = base_model(model)
    candidates = [s for s in find_activations(root) if s.feed_forward]
    chosen = _normalise_layers(layers, count_blocks(root, candidates)) if candidates else None
    return [s for s in candidates if chosen is None or s.layer in chosen]


def patch_model(
    model: nn.Module,
    activation: str = "crrelu",
    epsilon_init: float = DEFAULT_EPSILON_INIT,
    layers=None,
    activation_kwargs: dict | None = None,
) -> PatchReport:
    """Replace the feed-forward activation modules of ``model`` in place.

    Args:
        model: a transformers model (or a PEFT model wrapping one), or any ``nn.Module``.
        activation: ``"crrelu"``, another built-in candidate (``"swish_beta"``, ``"relu2"``,
            ``"corrected_<base>"``; ``"matched_<base>"`` with ``mu`` and ``sigma`` in
            ``activation_kwargs``, or measured by :func:`crrelu_llm.patching.calibration.calibrate`), any
            transformers activation name (``"gelu"``, ``"relu"``...; control arms), or the import
            path of an ``nn.Module`` class, ``"my_pkg.acts:MyActivation"``.
        epsilon_init: initial ``epsilon`` of each CRReLU module.
        layers: block indices to patch (negative counts from the end); ``None`` for all.
        activation_kwargs: keyword arguments of the activation class (recorded with the patch).

    Returns:
        A :class:`PatchReport`. The patch is also recorded in ``model.config`` so that
        ``save_pretrained`` -> ``from_pretrained`` (after ``import crrelu_llm``) rebuilds it.

    Example::

        >>> from crrelu_llm import epsilon_values, patch_model
        >>> from crrelu_llm.patching.tiny import tiny_causal_lm
        >>> model = tiny_causal_lm("gpt2")  # GPT-2's gelu_new in 2 blocks
        >>> patch_model(model, "crrelu").count
        2
        >>> {path: round(eps, 6) for path, eps in epsilon_values(model).items()}
        {'transformer.h.0.mlp.act': 0.01, 'transformer.h.1.mlp.act': 0.01}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"patch_model expects a torch.nn.Module such as a transformers model, got "
            f"{type(model).__name__}; load it first, e.g. AutoModelForCausalLM.from_pretrained(...)"
        )
    activation = canonical_activation(activation)
    check_activation(activation, activation_kwargs, epsilon_init)  # name, class, shape: before touching anything
    if needs_measurement(activation, activation_kwargs):
        raise measurement_needed_error(activation)
    root = base_model(model)
    sites = find_activations(root)
    candidates = [s for s in sites if s.feed_forward]
    model_type = type(root).__name__
    if not candidates:
        found = "; ".join(f"{s.path} ({s.module_type}: {s.reason})" for s in sites) or "no activation modules at all"
        raise NoActivationFoundError(
            f"{model_type} has no activation module in a feed-forward block to replace. Found: {found}. "
            "Either it has no feed-forward block (a state-space or recurrent model) or its MLP "
            "computes the activation inline (a function call, not a module), which module "
            "replacement cannot reach."
        )
    num_blocks = count_blocks(root, candidates)
    chosen_layers = _normalise_layers(layers, num_blocks)
    report = PatchReport(
        model_type=model_type,
        activation=activation,
        epsilon_init=float(epsilon_init) if activation == "crrelu" else None,
        activation_kwargs=dict(activation_kwargs) if activation_kwargs else None,
        layers=chosen_layers,
        num_layers=num_blocks,
        skipped=[s for s in sites if not s.feed_forward],
    )
    for site in candidates:
        if chosen_layers is not None and site.layer not in chosen_layers:
            continue
        device, dtype = placement(root, site.path)
        new = mark_patched(make_activation(activation, epsilon_init, activation_kwargs).to(device=device, dtype=dtype))
        set_submodule(root, site.path, new)
        report.replaced.append(ReplacedModule(site.path, site.module_type, type(new).__name__, site.layer))
    record_patch(root, report)
    name_activation_in_config(root, report, [s.path for s in candidates])
    return report


# --------------------------------------------------------------------------- helpers for training


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{path: module}`` for every activation module a patch put in (any class; PEFT's copies included)."""
    return {path: module for path, module in model.named_modules() if is_patched_activation(module)}


def activation_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{parameter name: parameter}`` for every learnable parameter of a patched activation module
    (CRReLU's ``epsilon``, a Swish's ``beta``, a user class's own), named as in ``named_parameters``.

    Example::

        >>> from crrelu_llm import activation_parameters, patch_model
        >>> from crrelu_llm.patching.tiny import tiny_causal_lm
        >>> model = tiny_causal_lm("gpt2")
        >>> _ = patch_model(model, "swish_beta")
        >>> sorted(activation_parameters(model))
        ['transformer.h.0.mlp.act.beta', 'transformer.h.1.mlp.act.beta']
    """
    return {
        f"{path}.{name}" if path else name: param
        for path, module in activation_modules(model).items()
        for name, param in module.named_parameters(recurse=False)
    }


def active_activation_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The activation parameters that train (PEFT's frozen ``original_module`` copies left out)."""
    return {n: p for n, p in activation_parameters(model).items() if ".original_module." not in n}


def epsilon_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{parameter name: parameter}`` for every CRReLU ``epsilon`` (names as in ``named_parameters``)."""
    return {
        f"{path}.epsilon" if path else "epsilon": module.epsilon
        for path, module in model.named_modules()
        if isinstance(module, CRReLU)
    }


def epsilon_tensor(param: torch.Tensor) -> torch.Tensor:
    """A CRReLU ``epsilon`` as a detached 0-dim tensor, however it is held (0-dim, or ``(1,)``
    under DeepSpeed; see :func:`full_parameter`)."""
    return full_parameter(param).reshape(())


def parameter_value(param: torch.Tensor) -> float:
    """What a log shows of an activation parameter: a scalar's value, a tensor's L2 norm."""
    full = full_parameter(param).float()
    return float(full.reshape(())) if full.numel() == 1 else float(full.norm())


def epsilon_values(model: nn.Module) -> dict[str, float]:
    """Current ``epsilon`` of every CRReLU module, keyed by module path."""
    return {
        path: epsilon_tensor(module.epsilon).float().item()
        for path, module in model.named_modules()
        if isinstance(module, CRReLU)
    }


def activation_logs(model: nn.Module) -> dict[str, float]:
    """``<parameter>/<block>`` for every parameter of the patched activations (``epsilon/03`` for
    CRReLU, ``beta/03`` for a Swish; scalars as values, tensors as norms), plus mean/min/max per
    parameter name (empty for unpatched models): the names under which trainers log them.

    Example::

        >>> from crrelu_llm import activation_logs, patch_model
        >>> from crrelu_llm.patching.tiny import tiny_causal_lm
        >>> model = tiny_causal_lm("gpt2")
        >>> _ = patch_model(model, "crrelu", epsilon_init=0.02)
        >>> round(activation_logs(model)["epsilon/mean"], 6)
        0.02
    """
    values, by_name = {}, {}
    for name, p in active_activation_parameters(model).items():
        path, _, short = name.rpartition(".")
        layer = layer_index(name)
        key = f"{short}/{layer:02d}" if layer is not None else f"{short}/{path}"
        if key in values:  # several per block (e.g. MoE shared + routed experts)
            key = f"{short}/{path}"
        values[key] = parameter_value(p)
        by_name.setdefault(short, []).append(values[key])
    for short, v in by_name.items():
        values.update({f"{short}/mean": sum(v) / len(v), f"{short}/min": min(v), f"{short}/max": max(v)})
    return values


def peft_modules_to_save(model: nn.Module) -> list[str]:
    """Module paths to pass as ``LoraConfig(modules_to_save=...)`` so that the activation
    parameters train with the adapter, are saved with it and survive ``merge_and_unload``."""
    return [
        path
        for path, module in activation_modules(base_model(model)).items()
        if next(module.parameters(recurse=False), None) is not None
    ]
