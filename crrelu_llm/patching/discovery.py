"""Finding activation modules by type, and deciding which sit in a feed-forward block.

Activation modules are the classes transformers' ``ACT2CLS`` builds, the activations of
``torch.nn``, and parameter-free leaf modules whose class name says they are an activation
(BLOOM's hard-coded ``BloomGelu``). One counts only where it sits in a feed-forward block:
attention, state-space mixers, routers, heads and vision/audio towers are left alone.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2CLS, ACT2FN
from transformers.modeling_utils import PreTrainedModel

from crrelu_llm.errors import PatchError, did_you_mean
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT, CRReLU


def available_activations() -> list[str]:
    """Names ``patch_model(activation=...)`` accepts: ``crrelu`` and every transformers name."""
    return sorted(set(ACT2CLS) | {"crrelu"})


def make_activation(name: str, epsilon_init: float = DEFAULT_EPSILON_INIT) -> nn.Module:
    """A fresh activation module for ``name``; ``epsilon_init`` is used by CRReLU only."""
    if not isinstance(name, str):
        raise TypeError(f"activation must be a string name, got {type(name).__name__}")
    if name == "crrelu":
        return CRReLU(epsilon_init)
    if name in ACT2CLS:
        return ACT2FN[name]
    raise PatchError(f"unknown activation {name!r}{did_you_mean(name, available_activations(), n=3)} "
                     f"Valid names: {', '.join(available_activations())}.")


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
    if isinstance(module, (CRReLU, *_TRANSFORMERS_ACTIVATIONS, *_TORCH_ACTIVATIONS)):
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
    sites = []
    for path, module in model.named_modules():
        if path and is_activation_module(module):
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
