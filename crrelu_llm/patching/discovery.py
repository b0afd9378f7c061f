"""Finding activation modules by type, and deciding which sit in a feed-forward block.

Activation modules are the classes transformers' ``ACT2CLS`` builds, the activations of
``torch.nn``, and parameter-free leaf modules whose class name says they are an activation
(BLOOM's hard-coded ``BloomGelu``). One counts only where it sits in a feed-forward block:
attention, state-space mixers, routers, heads and vision/audio towers are left alone.
"""

from __future__ import annotations

import inspect
import itertools
import json
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2CLS, ACT2FN
from transformers.modeling_utils import PreTrainedModel

from crrelu_llm.errors import PatchError, did_you_mean
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT, CRReLU, is_patched_activation
from crrelu_llm.ops.candidates import (
    CORRECTED_PREFIX,
    MATCHED_PREFIX,
    CorrectedActivation,
    MatchedActivation,
    SwishBeta,
)

BUILT_IN = {
    "crrelu": "CRReLU (Sun et al. 2024), learnable eps",
    "swish_beta": "x*sigmoid(beta*x), learnable beta (Ramachandran et al. 2017)",
    "relu2": "squared ReLU (So et al. 2021, Primer)",
}
ALIASES = {"squared_relu": "relu2"}


def available_activations() -> list[str]:
    """Names ``patch_model(activation=...)`` accepts besides import paths: the built-in candidates
    and every transformers name."""
    return sorted(set(ACT2CLS) | set(BUILT_IN) | set(ALIASES))


def is_import_path(name: str) -> bool:
    """``package.module:Class``: a user's activation class."""
    return isinstance(name, str) and ":" in name


def canonical_activation(name: str) -> str:
    return ALIASES.get(name, name)


def _import_class(path: str) -> type:
    import importlib

    module_name, _, class_name = path.partition(":")
    fix = "give module:Class with the module importable here (installed, or on PYTHONPATH)"
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's path
        raise PatchError(
            f"activation {path!r}: module {module_name!r} cannot be imported ({type(err).__name__}: {err}); {fix}"
        ) from None
    cls = module
    for part in class_name.split("."):
        cls = getattr(cls, part, None)
    if cls is None:
        raise PatchError(f"activation {path!r}: {module_name} has no {class_name!r}; {fix}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PatchError(
            f"activation {path!r} is not a torch.nn.Module class ({type(cls).__name__}); "
            "give a class whose forward(x) returns a tensor of x's shape"
        )
    return cls


def is_matched(name) -> bool:
    """``matched_<a transformers name>``: the correction placed at the layer's measured inputs."""
    return isinstance(name, str) and name.startswith(MATCHED_PREFIX) and name[len(MATCHED_PREFIX) :] in ACT2CLS


def needs_measurement(name, kwargs: dict | None = None) -> bool:
    """A ``matched_<base>`` patch without its ``mu`` and ``sigma``: they are measured on the model's
    own pre-activations over calibration text (:func:`crrelu_llm.patching.calibration.calibrate`)."""
    return is_matched(canonical_activation(name) if isinstance(name, str) else name) and not (
        kwargs and "mu" in kwargs and "sigma" in kwargs
    )


def measurement_needed_error(name: str) -> PatchError:
    return PatchError(
        f"activation {name!r} is placed at each layer's own inputs, measured on text: give calibration "
        "data (crrelu-llm patch --calibration-data DATA; a recipe measures on its training rows), or "
        "activation_kwargs with mu and sigma"
    )


# what a matched module is built with until its layer's mu and sigma are measured (never kept)
UNMEASURED = {"mu": 0.0, "sigma": 1.0}


def make_activation(name: str, epsilon_init: float = DEFAULT_EPSILON_INIT, kwargs: dict | None = None) -> nn.Module:
    """A fresh activation module for ``name`` (a built-in or transformers name, or an import path
    ``module:Class``), built with ``kwargs``; ``epsilon_init`` is used by CRReLU and
    ``corrected_<base>`` only (``matched_<base>`` starts at 0)."""
    if not isinstance(name, str):
        raise TypeError(f"activation must be a string name, got {type(name).__name__}")
    name, kwargs = canonical_activation(name), dict(kwargs or {})
    if name == "crrelu":
        cls, kwargs = CRReLU, {"epsilon_init": epsilon_init, **kwargs}
    elif name == "swish_beta":
        cls = SwishBeta
    elif name.startswith(CORRECTED_PREFIX) and name[len(CORRECTED_PREFIX) :] in ACT2CLS:
        cls, kwargs = (
            CorrectedActivation,
            {"base": name[len(CORRECTED_PREFIX) :], "epsilon_init": epsilon_init, **kwargs},
        )
    elif is_matched(name):
        cls, kwargs = MatchedActivation, {"base": name[len(MATCHED_PREFIX) :], **UNMEASURED, **kwargs}
    elif is_import_path(name):
        cls = _import_class(name)
    elif name in ACT2CLS:
        if not kwargs:
            return ACT2FN[name]
        cls = ACT2CLS[name][0] if isinstance(ACT2CLS[name], tuple) else ACT2CLS[name]
    else:
        raise PatchError(
            f"unknown activation {name!r}{did_you_mean(name, available_activations(), n=3)} "
            f"Valid names: {', '.join(available_activations())}, corrected_<a transformers name> "
            "(the correction term on that base), matched_<a transformers name> (the correction at the "
            "layer's measured inputs), or an import path module:Class."
        )
    try:  # kwargs are data: bound to the class's signature first, never evaluated
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        missing = [
            p.name
            for p in inspect.signature(cls).parameters.values()
            if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in kwargs
        ]
        if missing and not kwargs:
            raise PatchError(
                f"activation {name!r} does not look like an activation: {cls.__name__} needs "
                f"{', '.join(missing)} to be built, and an activation module is built from "
                "activation_kwargs alone; give a class whose forward(x) returns a tensor of x's "
                "shape (or its arguments in activation_kwargs)"
            ) from None
        raise PatchError(f"activation {name!r} cannot be built with activation_kwargs {kwargs}: {err}") from None
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise PatchError(f"activation {name!r} cannot be built with activation_kwargs {kwargs}: {err}") from None


def activation_kwargs_value(value) -> dict | None:
    """The one check of ``activation_kwargs`` (recipe key, ``--activation-kwargs``): a mapping
    of keyword arguments, or JSON for one; None when empty."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise PatchError(
            "activation_kwargs must be a mapping of keyword arguments, e.g. {beta_init: 1.702} in a "
            "recipe or '{\"beta_init\": 1.702}' on the command line"
        )
    return value


def supports_calibration(name: str, kwargs: dict | None = None) -> bool:
    """Whether the class defines ``least_squares_init(x, target)`` (``epsilon_init: calibrate``)."""
    return callable(getattr(make_activation(name, DEFAULT_EPSILON_INIT, kwargs), "least_squares_init", None))


def check_activation(name: str, kwargs: dict | None = None, epsilon_init: float = DEFAULT_EPSILON_INIT) -> None:
    """Build ``name`` and run it on a small tensor: a class that cannot be built, or whose output
    shape differs from its input's, is refused before any model is loaded."""
    module = make_activation(name, epsilon_init, kwargs)
    x = torch.linspace(-3, 3, 2 * 3 * 8).reshape(2, 3, 8)
    try:
        with torch.no_grad():
            y = module(x)
    except Exception as err:  # noqa: BLE001 - the user's forward: report it in one line
        raise PatchError(f"activation {name!r} fails on a (2, 3, 8) tensor: {type(err).__name__}: {err}") from None
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise PatchError(
            f"activation {name!r} maps a (2, 3, 8) input to {shape}: an MLP activation must "
            "return a tensor of its input's shape"
        )


_TORCH_ACTIVATIONS = tuple(
    cls
    for cls in vars(nn.modules.activation).values()
    if isinstance(cls, type)
    and issubclass(cls, nn.Module)
    and cls.__module__ == nn.modules.activation.__name__
    and cls.__name__ not in {"MultiheadAttention", "Softmax", "Softmin", "Softmax2d", "LogSoftmax", "GLU"}
)


_TRANSFORMERS_ACTIVATIONS = tuple({c[0] if isinstance(c, tuple) else c for c in ACT2CLS.values()})


# Parameter-free leaves defined by a model file, e.g. BLOOM's BloomGelu.
_ACTIVATION_CLASS_NAME = re.compile(r"gelu|relu|silu|swish|mish|activation$|^act(fn)?$", re.I)


# Deciding whether an activation sits in a feed-forward block: walk up from its parent; the
# nearest ancestor whose class name (CamelCase words) or attribute name (snake_case words)
# says "feed-forward" or "something else" decides.
_FEED_FORWARD_SUBSTRINGS = (
    "mlp",
    "feedforward",
    "ffn",
    "expert",
    "moe",
    "intermediate",
    "densereludense",
    "ffw",
    "glu",
)


_FEED_FORWARD_WORDS = {"ff", "fc", "mlp", "ffn", "experts", "expert", "intermediate"}


_NOT_FEED_FORWARD_WORDS = {
    "attention",
    "attn",
    "mixer",
    "ssm",
    "mamba",
    "rwkv",
    "router",
    "embedding",
    "embeddings",
    "embed",
    "norm",
    "rotary",
    "head",
    "pooler",
    "classifier",
    "projector",
    "conv",
    "recurrent",
    "lstm",
}


_OTHER_MODALITY = re.compile(r"vision|visual|image|audio|speech|video", re.I)


_CAMEL_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|$)|[A-Z]?[a-z]+|\d+")


def _words(class_name: str, attribute: str) -> set[str]:
    return {w.lower() for w in _CAMEL_WORD.findall(class_name)} | set(attribute.lower().split("_"))


def _verdict(class_name: str, attribute: str) -> bool | None:
    """True: a feed-forward block; False: something else; None: undecided (keep walking up)."""
    lowered = class_name.lower()
    words = _words(class_name, attribute)
    if any(s in lowered for s in _FEED_FORWARD_SUBSTRINGS) or words & _FEED_FORWARD_WORDS:
        return True
    if words & _NOT_FEED_FORWARD_WORDS:
        return False
    return None


LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def is_activation_module(module: nn.Module) -> bool:
    """True for a module that is an element-wise activation, judged by its type."""
    if is_patched_activation(module) or isinstance(
        module, (SwishBeta, CorrectedActivation, MatchedActivation, *_TRANSFORMERS_ACTIVATIONS, *_TORCH_ACTIVATIONS)
    ):
        return True
    if next(module.children(), None) is not None or next(module.parameters(recurse=False), None) is not None:
        return False
    return bool(_ACTIVATION_CLASS_NAME.search(type(module).__name__))


def _is_linear_like(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) or (
        isinstance(weight, torch.Tensor) and weight.dim() == 2 and type(module).__name__ in {"Conv1D", "Linear"}
    )


@dataclass
class ActivationSite:
    """An activation module found in a model, and whether it sits in a feed-forward block."""

    path: str
    module_type: str
    layer: int | None
    feed_forward: bool
    reason: str


def _classify(root: nn.Module, path: str) -> tuple[bool, str]:
    parts = path.split(".")
    ancestors = []  # (attribute, path, module) from the root's child down to the parent
    module = root
    for i, part in enumerate(parts[:-1]):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
        ancestors.append((part, ".".join(parts[: i + 1]), module))
    if not ancestors:
        return False, "not inside any block"
    for attribute, anc_path, anc in ancestors:
        if _OTHER_MODALITY.search(attribute) or (
            isinstance(anc, PreTrainedModel) and _OTHER_MODALITY.search(type(anc).__name__)
        ):
            return False, f"inside a non-text tower ({type(anc).__name__} at {anc_path})"
    for attribute, anc_path, anc in reversed(ancestors):
        if isinstance(anc, PreTrainedModel):
            break
        verdict = _verdict(type(anc).__name__, attribute)
        if verdict is True:
            return True, f"in {type(anc).__name__} at {anc_path}"
        if verdict is False:
            return False, f"inside {type(anc).__name__} at {anc_path}"
    parent = ancestors[-1][2]
    if sum(_is_linear_like(child) for child in parent.children()) >= 2:
        return True, f"beside the linear layers of {type(parent).__name__}"
    return False, f"{type(parent).__name__} does not look like a feed-forward block"


def layer_index(path: str) -> int | None:
    match = LAYER_INDEX.search(path)
    return int(match.group(1)) if match else None


def find_activations(model: nn.Module) -> list[ActivationSite]:
    """Every activation module of ``model`` with its block index and feed-forward verdict."""
    model = base_model(model)
    sites, inside = [], []
    for path, module in model.named_modules():
        if any(path.startswith(f"{outer}.") for outer in inside):
            continue  # a part of an activation (CorrectedActivation's base) is not a site of its own
        if path and is_activation_module(module):
            inside.append(path)
            feed_forward, reason = _classify(model, path)
            sites.append(ActivationSite(path, type(module).__name__, layer_index(path), feed_forward, reason))
    return sites


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (paths are recorded relative to it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if isinstance(parent, (nn.ModuleList, nn.Sequential)) and name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def placement(root: nn.Module, path: str) -> tuple[torch.device, torch.dtype]:
    """Device and float dtype of the parameters next to ``path`` (for the new module)."""
    parent_path = path.rpartition(".")[0]
    parent = root.get_submodule(parent_path) if parent_path else root
    for p in itertools.chain(parent.parameters(), root.parameters()):
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def count_blocks(root: nn.Module, sites: list[ActivationSite]) -> int | None:
    for site in sites:
        if site.layer is None:
            continue
        match = LAYER_INDEX.search(site.path)
        container = root.get_submodule(site.path[: match.start(1)].rstrip("."))
        if isinstance(container, (nn.ModuleList, nn.Sequential)):
            return len(container)
    return None
