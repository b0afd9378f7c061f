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

import copy
import difflib
import itertools
import json
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers.activations import ACT2CLS, ACT2FN
from transformers.initialization import no_init_weights
from transformers.modeling_utils import PreTrainedModel

from .activation import DEFAULT_EPSILON_INIT, CRReLU
from .distributed import full_parameter
from .errors import ModelLoadError, NoActivationFoundError, PatchError
from .version import __version__

PATCH_CONFIG_KEY = "crrelu_llm_patch"
PATCH_RECORD_VERSION = 1

# --------------------------------------------------------------------------- registration


def register_with_transformers() -> None:
    """Make ``"crrelu"`` a transformers activation name and let checkpoints rebuild patches.

    ``ACT2FN`` is a separate copy of ``ACT2CLS`` that instantiates a fresh module on every
    lookup, so each layer gets its own ``epsilon``. Idempotent; runs on ``import crrelu_llm``.
    """
    ACT2CLS["crrelu"] = CRReLU
    ACT2FN["crrelu"] = CRReLU
    if not getattr(PreTrainedModel.post_init, "_crrelu_llm_wrapped", False):
        original_post_init = PreTrainedModel.post_init

        def post_init(self, *args, **kwargs):
            # Rebuild recorded patches first, so the weight init, tied-keys and
            # keep-in-fp32 bookkeeping of post_init see the final module tree.
            record = getattr(getattr(self, "config", None), PATCH_CONFIG_KEY, None)
            if record:
                _restore_patch(self, record)
            return original_post_init(self, *args, **kwargs)

        post_init._crrelu_llm_wrapped = True
        post_init.__wrapped__ = original_post_init
        PreTrainedModel.post_init = post_init
    _guard_model_type()
    if not getattr(PreTrainedModel._initialize_weights, "_crrelu_llm_wrapped", False):
        original_initialize = PreTrainedModel._initialize_weights

        def _initialize_weights(self, module, *args, **kwargs):
            # Models' _init_weights do not know CRReLU: an epsilon missing from a checkpoint
            # would otherwise keep whatever memory it was materialised in.
            if isinstance(module, CRReLU):
                if not getattr(module.epsilon, "_is_hf_initialized", False) and not module.epsilon.is_meta:
                    module.reset_parameters()
                module._is_hf_initialized = True
                return None
            return original_initialize(self, module, *args, **kwargs)

        _initialize_weights._crrelu_llm_wrapped = True
        _initialize_weights.__wrapped__ = original_initialize
        PreTrainedModel._initialize_weights = _initialize_weights


GUARD_PREFIX = "crrelu-"


def _guard_model_type() -> None:
    """A patch that no config key can express (some blocks only; BLOOM's hard-coded GELU) is
    saved with ``model_type: "crrelu-<type>"``, which plain transformers refuses ("does not
    recognize this architecture") instead of silently building the original activation. With
    crrelu_llm imported, reading such a config maps the type back, and the recorded patch is
    rebuilt as usual."""
    from transformers import PretrainedConfig

    if getattr(PretrainedConfig.to_json_string, "_crrelu_llm_wrapped", False):
        return
    original_to_json = PretrainedConfig.to_json_string
    original_read = PretrainedConfig._dict_from_json_file.__func__

    def to_json_string(self, *args, **kwargs):
        text = original_to_json(self, *args, **kwargs)
        record = getattr(self, PATCH_CONFIG_KEY, None)
        if isinstance(record, dict) and record.get("guard") == "model_type" and getattr(self, "model_type", ""):
            data = json.loads(text)
            data["model_type"] = GUARD_PREFIX + str(type(self).model_type).removeprefix(GUARD_PREFIX)
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        return text

    def _dict_from_json_file(cls, json_file):
        data = original_read(cls, json_file)
        model_type = data.get("model_type")
        if isinstance(model_type, str) and model_type.startswith(GUARD_PREFIX) and data.get(PATCH_CONFIG_KEY):
            data["model_type"] = model_type.removeprefix(GUARD_PREFIX)
        return data

    to_json_string._crrelu_llm_wrapped = True
    to_json_string.__wrapped__ = original_to_json
    PretrainedConfig.to_json_string = to_json_string
    PretrainedConfig._dict_from_json_file = classmethod(_dict_from_json_file)


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
    close = difflib.get_close_matches(name, available_activations(), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise PatchError(
        f"Unknown activation {name!r}.{hint} Valid names: {', '.join(available_activations())}."
    )


# --------------------------------------------------------------------------- discovery

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
_FEED_FORWARD_SUBSTRINGS = ("mlp", "feedforward", "ffn", "expert", "moe", "intermediate", "densereludense", "ffw", "glu")
_FEED_FORWARD_WORDS = {"ff", "fc", "mlp", "ffn", "experts", "expert", "intermediate"}
_NOT_FEED_FORWARD_WORDS = {
    "attention", "attn", "mixer", "ssm", "mamba", "rwkv", "router", "embedding", "embeddings", "embed",
    "norm", "rotary", "head", "pooler", "classifier", "projector", "conv", "recurrent", "lstm",
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


_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


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
    match = _LAYER_INDEX.search(path)
    return int(match.group(1)) if match else None


def find_activations(model: nn.Module) -> list[ActivationSite]:
    """Every activation module of ``model`` with its block index and feed-forward verdict."""
    model = _base_model(model)
    sites = []
    for path, module in model.named_modules():
        if path and is_activation_module(module):
            feed_forward, reason = _classify(model, path)
            sites.append(ActivationSite(path, type(module).__name__, layer_index(path), feed_forward, reason))
    return sites


# --------------------------------------------------------------------------- patching


@dataclass
class ReplacedModule:
    path: str
    old_type: str
    new_type: str
    layer: int | None


@dataclass
class PatchReport:
    """What ``patch_model`` did: every replaced module, and activations it left alone."""

    model_type: str
    activation: str
    epsilon_init: float | None
    layers: list[int] | None
    num_layers: int | None
    replaced: list[ReplacedModule] = field(default_factory=list)
    skipped: list[ActivationSite] = field(default_factory=list)
    calibrated_epsilons: dict[str, float] | None = None  # epsilon_init: calibrate, per module path

    @property
    def count(self) -> int:
        return len(self.replaced)

    def to_dict(self) -> dict:
        return {**asdict(self), "count": self.count}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        kinds = Counter((r.old_type, r.new_type) for r in self.replaced)
        eps = f" (epsilon_init={self.epsilon_init})" if self.epsilon_init is not None else \
            (" (epsilon calibrated per layer)" if self.calibrated_epsilons else "")
        scope = "all blocks" if self.layers is None else f"blocks {self.layers}"
        lines = [f"Patched {self.model_type}: {self.count} activation module(s) -> {self.activation}{eps}, {scope}"]
        lines += [f"  {old} -> {new}: {n}" for (old, new), n in kinds.items()]
        lines += [f"  {r.path}: {r.old_type} -> {r.new_type}" for r in self.replaced]
        if self.calibrated_epsilons:
            lines.append("Calibrated eps (least squares against the replaced activation):")
            lines += [f"  {path}: {value:.6g}" for path, value in self.calibrated_epsilons.items()]
        if self.skipped:
            lines.append(f"Left alone ({len(self.skipped)}):")
            lines += [f"  {s.path}: {s.module_type} ({s.reason})" for s in self.skipped]
        return "\n".join(lines)


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (paths are recorded relative to it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if isinstance(parent, (nn.ModuleList, nn.Sequential)) and name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def _placement(root: nn.Module, path: str) -> tuple[torch.device, torch.dtype]:
    """Device and float dtype of the parameters next to ``path`` (for the new module)."""
    parent_path = path.rpartition(".")[0]
    parent = root.get_submodule(parent_path) if parent_path else root
    for p in itertools.chain(parent.parameters(), root.parameters()):
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _num_blocks(root: nn.Module, sites: list[ActivationSite]) -> int | None:
    for site in sites:
        if site.layer is None:
            continue
        match = _LAYER_INDEX.search(site.path)
        container = root.get_submodule(site.path[: match.start(1)].rstrip("."))
        if isinstance(container, (nn.ModuleList, nn.Sequential)):
            return len(container)
    return None


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
    root = _base_model(model)
    candidates = [s for s in find_activations(root) if s.feed_forward]
    chosen = _normalise_layers(layers, _num_blocks(root, candidates)) if candidates else None
    return [s for s in candidates if chosen is None or s.layer in chosen]


def patch_model(
    model: nn.Module,
    activation: str = "crrelu",
    epsilon_init: float = DEFAULT_EPSILON_INIT,
    layers=None,
) -> PatchReport:
    """Replace the feed-forward activation modules of ``model`` in place.

    Args:
        model: a transformers model (or a PEFT model wrapping one), or any ``nn.Module``.
        activation: ``"crrelu"`` or any transformers activation name (``"gelu"``, ``"relu"``,
            ``"silu"``...), e.g. for control arms.
        epsilon_init: initial ``epsilon`` of each CRReLU module.
        layers: block indices to patch (negative counts from the end); ``None`` for all.

    Returns:
        A :class:`PatchReport`. The patch is also recorded in ``model.config`` so that
        ``save_pretrained`` -> ``from_pretrained`` (after ``import crrelu_llm``) rebuilds it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"patch_model expects a torch.nn.Module such as a transformers model, got "
            f"{type(model).__name__}; load it first, e.g. AutoModelForCausalLM.from_pretrained(...)"
        )
    make_activation(activation, epsilon_init)  # validate the name and epsilon before touching anything
    root = _base_model(model)
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
    num_blocks = _num_blocks(root, candidates)
    chosen_layers = _normalise_layers(layers, num_blocks)
    report = PatchReport(
        model_type=model_type,
        activation=activation,
        epsilon_init=float(epsilon_init) if activation == "crrelu" else None,
        layers=chosen_layers,
        num_layers=num_blocks,
        skipped=[s for s in sites if not s.feed_forward],
    )
    for site in candidates:
        if chosen_layers is not None and site.layer not in chosen_layers:
            continue
        device, dtype = _placement(root, site.path)
        new = make_activation(activation, epsilon_init).to(device=device, dtype=dtype)
        _set_submodule(root, site.path, new)
        report.replaced.append(ReplacedModule(site.path, site.module_type, type(new).__name__, site.layer))
    _record_patch(root, report)
    _name_activation_in_config(root, report, [s.path for s in candidates])
    return report


# --------------------------------------------------------------------------- the config record


def _record_patch(root: nn.Module, report: PatchReport) -> None:
    config = getattr(root, "config", None)
    if config is None:
        return
    record = dict(getattr(config, PATCH_CONFIG_KEY, None) or {})
    modules = dict(record.get("modules", {}))
    for r in report.replaced:
        entry = {"activation": report.activation, "original": modules.get(r.path, {}).get("original", r.old_type)}
        if report.activation == "crrelu":
            entry["epsilon_init"] = report.epsilon_init
        modules[r.path] = entry
    setattr(config, PATCH_CONFIG_KEY, {"version": PATCH_RECORD_VERSION, "crrelu_llm": __version__, "modules": modules})


# Config keys through which architectures build their MLP activation.
ACTIVATION_CONFIG_KEYS = ("hidden_act", "activation_function", "hidden_activation")


def _module_types(model_class, config) -> dict[str, str] | None:
    """The module tree ``config`` builds (types by path), on the meta device without weight
    initialisation (which costs most of a meta build and changes no module's type)."""
    trial = copy.deepcopy(config)
    if hasattr(trial, PATCH_CONFIG_KEY):
        delattr(trial, PATCH_CONFIG_KEY)
    try:
        with torch.device("meta"), no_init_weights(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = model_class(trial)
    except Exception:  # noqa: BLE001 - an architecture that cannot be rebuilt this way keeps the record only
        return None
    return {path: type(module).__name__ for path, module in built.named_modules()}


def _name_activation_in_config(root: nn.Module, report: PatchReport, feed_forward: list[str]) -> None:
    """Where the architecture builds exactly the patched modules from one config key and every
    feed-forward activation is patched, set that key to the new activation's name, so that a
    checkpoint read without crrelu-llm either builds the right modules (``relu``) or fails
    loudly (``crrelu`` is unknown to plain transformers) instead of silently building the
    original activation. The key and its old value go into the record."""
    config = getattr(root, "config", None)
    record = getattr(config, PATCH_CONFIG_KEY, None) if config is not None else None
    if not record or not isinstance(root, PreTrainedModel):
        return
    if "config_key" not in record:  # until a key is found, guard by the model type (see register_with_transformers)
        record = {**record, "guard": "model_type"}
        setattr(config, PATCH_CONFIG_KEY, record)
    patched = {path for path, entry in record["modules"].items() if entry["activation"] == report.activation}
    if set(feed_forward) - patched or len(patched) != len(record["modules"]):
        return  # some blocks only, or mixed activations: a single config key cannot say it
    new_type = type(make_activation(report.activation, report.epsilon_init or DEFAULT_EPSILON_INIT)).__name__
    before = None
    for key in ACTIVATION_CONFIG_KEYS:
        value = getattr(config, key, None)
        if not isinstance(value, str) or value == report.activation:
            continue
        before = before or _module_types(type(root), config)
        trial = copy.deepcopy(config)
        setattr(trial, key, report.activation)
        after = _module_types(type(root), trial)
        if before is None or after is None:
            return
        changed = {path for path in before if after.get(path) != before[path]}
        if changed == patched and all(after[path] == new_type for path in changed):
            original = record.get("config_key", {}).get("original", value)
            setattr(config, key, report.activation)
            record = {k: v for k, v in record.items() if k != "guard"}
            setattr(config, PATCH_CONFIG_KEY, {**record, "config_key": {"name": key, "original": original}})
            return


def patch_record(model: nn.Module) -> dict | None:
    """The patch recorded in the model's config (``None`` for an unpatched model)."""
    config = getattr(_base_model(model), "config", None)
    return getattr(config, PATCH_CONFIG_KEY, None) if config is not None else None


def _resolve(root: nn.Module, path: str) -> str | None:
    """``path`` as it exists in ``root``; inner models (built before the outer one wraps them)
    see the recorded path without the outer prefixes."""
    parts = path.split(".")
    for start in range(len(parts)):
        candidate = ".".join(parts[start:])
        try:
            root.get_submodule(candidate)
        except AttributeError:
            continue
        return candidate
    return None


def _restore_patch(root: nn.Module, record: dict) -> None:
    if record.get("version") != PATCH_RECORD_VERSION:
        raise PatchError(
            f"config.{PATCH_CONFIG_KEY} has version {record.get('version')!r}; this crrelu-llm reads "
            f"version {PATCH_RECORD_VERSION}. Upgrade crrelu-llm to load this checkpoint."
        )
    for path, entry in record.get("modules", {}).items():
        local = _resolve(root, path)
        if local is None:
            continue
        activation = entry["activation"]
        new = make_activation(activation, entry.get("epsilon_init", DEFAULT_EPSILON_INIT))
        current = root.get_submodule(local)
        if type(current) is type(new):
            if isinstance(current, CRReLU):  # built from the config key: give it the recorded init
                current.epsilon_init = new.epsilon_init
            continue
        device, dtype = _placement(root, local)
        _set_submodule(root, local, new.to(device=device, dtype=dtype))


def verify_patch(model: nn.Module) -> None:
    """Check that every module the config records is in place with the recorded activation."""
    root = _base_model(model)
    record = patch_record(root) or {}
    problems = []
    for path, entry in record.get("modules", {}).items():
        try:
            module = root.get_submodule(path)
        except AttributeError:
            problems.append(f"{path}: missing")
            continue
        expected = type(make_activation(entry["activation"], entry.get("epsilon_init", DEFAULT_EPSILON_INIT)))
        if type(module) is not expected:
            problems.append(f"{path}: {type(module).__name__}, expected {expected.__name__}")
    if problems:
        raise ModelLoadError(
            f"The model does not match its recorded patch (config.{PATCH_CONFIG_KEY}): " + "; ".join(problems)
        )


# --------------------------------------------------------------------------- helpers for training


def epsilon_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{parameter name: parameter}`` for every CRReLU ``epsilon`` (names as in ``named_parameters``)."""
    return {f"{path}.epsilon" if path else "epsilon": module.epsilon
            for path, module in model.named_modules() if isinstance(module, CRReLU)}


def epsilon_tensor(param: torch.Tensor) -> torch.Tensor:
    """A CRReLU ``epsilon`` as a detached 0-dim tensor, however it is held (0-dim, or ``(1,)``
    under DeepSpeed; see :func:`full_parameter`)."""
    return full_parameter(param).reshape(())


def epsilon_values(model: nn.Module) -> dict[str, float]:
    """Current ``epsilon`` of every CRReLU module, keyed by module path."""
    return {
        path: epsilon_tensor(module.epsilon).float().item()
        for path, module in model.named_modules()
        if isinstance(module, CRReLU)
    }


def active_epsilons(model: nn.Module) -> dict[str, nn.Parameter]:
    """The CRReLU epsilons that train (PEFT's frozen ``original_module`` copies left out)."""
    return {n: p for n, p in epsilon_parameters(model).items() if ".original_module." not in n}


def epsilon_logs(model: nn.Module) -> dict[str, float]:
    """``epsilon/<block>`` for every CRReLU, plus mean/min/max (empty for unpatched models): the
    names under which trainers log them."""
    values = {}
    for name, p in active_epsilons(model).items():
        layer = layer_index(name)
        key = f"epsilon/{layer:02d}" if layer is not None else f"epsilon/{name.removesuffix('.epsilon')}"
        if key in values:  # several per block (e.g. MoE shared + routed experts)
            key = f"epsilon/{name.removesuffix('.epsilon')}"
        values[key] = float(epsilon_tensor(p).float().item())
    if values:
        v = list(values.values())
        values.update({"epsilon/mean": sum(v) / len(v), "epsilon/min": min(v), "epsilon/max": max(v)})
    return values


def peft_modules_to_save(model: nn.Module) -> list[str]:
    """Module paths to pass as ``LoraConfig(modules_to_save=...)`` so that the ``epsilon``
    parameters train with the adapter, are saved with it and survive ``merge_and_unload``."""
    root = _base_model(model)
    return [path for path, module in root.named_modules() if isinstance(module, CRReLU)]
