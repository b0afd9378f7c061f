"""The patch record in ``config.crrelu_llm_patch``, and the transformers hooks that rebuild it.

Once ``crrelu_llm`` is imported, ``from_pretrained``/``from_config`` rebuild the recorded
modules before the weights (and the learned ``epsilon`` values) are loaded; a patch no config
key can express is saved under a guarded model type that plain transformers refuses.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers.activations import ACT2CLS, ACT2FN
from transformers.initialization import no_init_weights
from transformers.modeling_utils import PreTrainedModel

from crrelu_llm.errors import ModelLoadError, PatchError
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT, CRReLU, is_patched_activation, mark_patched
from crrelu_llm.ops.candidates import SwishBeta
from crrelu_llm.ops.distributed import outside_zero3_init
from crrelu_llm.patching.discovery import (
    ActivationSite,
    base_model,
    is_import_path,
    make_activation,
    placement,
    set_submodule,
)
from crrelu_llm.patching.trust import install as install_trust
from crrelu_llm.patching.trust import require
from crrelu_llm.runtime import deepspeed_zero3_enabled
from crrelu_llm.version import __version__

PATCH_CONFIG_KEY = "crrelu_llm_patch"
PATCH_RECORD_VERSION = 1


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
    activation_kwargs: dict | None = None  # the activation class's keyword arguments
    calibrated: dict[str, dict[str, float]] | None = None  # calibrate, any class: parameters per module path

    @property
    def count(self) -> int:
        return len(self.replaced)

    def to_dict(self) -> dict:
        return {**asdict(self), "count": self.count}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        kinds = Counter((r.old_type, r.new_type) for r in self.replaced)
        eps = (
            f" (epsilon_init={self.epsilon_init})"
            if self.epsilon_init is not None
            else (" (epsilon calibrated per layer)" if self.calibrated_epsilons else "")
        )
        scope = "all blocks" if self.layers is None else f"blocks {self.layers}"
        kwargs = f" {self.activation_kwargs}" if self.activation_kwargs else ""
        lines = [
            f"Patched {self.model_type}: {self.count} activation module(s) -> {self.activation}{kwargs}{eps}, {scope}"
        ]
        lines += [f"  {old} -> {new}: {n}" for (old, new), n in kinds.items()]
        lines += [f"  {r.path}: {r.old_type} -> {r.new_type}" for r in self.replaced]
        if self.calibrated_epsilons:
            lines.append("Calibrated eps (least squares against the replaced activation):")
            lines += [f"  {path}: {value:.6g}" for path, value in self.calibrated_epsilons.items()]
        if self.calibrated:
            lines.append("Set per layer from the original's inputs (calibration text):")
            lines += [
                f"  {path}: " + ", ".join(f"{name}={value:.6g}" for name, value in values.items())
                for path, values in self.calibrated.items()
            ]
        if self.skipped:
            lines.append(f"Left alone ({len(self.skipped)}):")
            lines += [f"  {s.path}: {s.module_type} ({s.reason})" for s in self.skipped]
        return "\n".join(lines)


def register_with_transformers() -> None:
    """Make ``"crrelu"`` a transformers activation name and let checkpoints rebuild patches.

    ``ACT2FN`` is a separate copy of ``ACT2CLS`` that instantiates a fresh module on every
    lookup, so each layer gets its own ``epsilon``. Idempotent; runs on ``import crrelu_llm``.
    """
    ACT2CLS["crrelu"] = CRReLU
    ACT2FN["crrelu"] = CRReLU
    ACT2CLS["swish_beta"] = SwishBeta
    ACT2FN["swish_beta"] = SwishBeta
    if not getattr(PreTrainedModel.post_init, "_crrelu_llm_wrapped", False):
        original_post_init = PreTrainedModel.post_init

        def post_init(self, *args, **kwargs):
            # Rebuild recorded patches first, so the weight init, tied-keys and
            # keep-in-fp32 bookkeeping of post_init see the final module tree.
            record = getattr(getattr(self, "config", None), PATCH_CONFIG_KEY, None)
            if record:
                restore_patch(self, record)
            return original_post_init(self, *args, **kwargs)

        post_init._crrelu_llm_wrapped = True
        post_init.__wrapped__ = original_post_init
        PreTrainedModel.post_init = post_init
    _guard_model_type()
    install_trust()
    if not getattr(PreTrainedModel._initialize_weights, "_crrelu_llm_wrapped", False):
        original_initialize = PreTrainedModel._initialize_weights

        def _initialize_weights(self, module, *args, **kwargs):
            # Models' _init_weights do not know patched activations: an epsilon (or beta) missing
            # from a checkpoint would otherwise keep whatever memory it was materialised in.
            own = list(module.parameters(recurse=False))
            if is_patched_activation(module) and own and hasattr(module, "reset_parameters"):
                if not any(getattr(p, "_is_hf_initialized", False) or p.is_meta for p in own):
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


def record_patch(root: nn.Module, report: PatchReport) -> None:
    config = getattr(root, "config", None)
    if config is None:
        return
    record = dict(getattr(config, PATCH_CONFIG_KEY, None) or {})
    modules = dict(record.get("modules", {}))
    for r in report.replaced:
        entry = {"activation": report.activation, "original": modules.get(r.path, {}).get("original", r.old_type)}
        if report.activation == "crrelu":
            entry["epsilon_init"] = report.epsilon_init
        if report.activation_kwargs:
            entry["activation_kwargs"] = dict(report.activation_kwargs)
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


def name_activation_in_config(root: nn.Module, report: PatchReport, feed_forward: list[str]) -> None:
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
    if set(feed_forward) - patched or len(patched) != len(record["modules"]) or report.activation_kwargs:
        return  # some blocks only, mixed activations or keyword arguments: a single config key cannot say it
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
    config = getattr(base_model(model), "config", None)
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


def restore_patch(root: nn.Module, record: dict) -> None:
    if record.get("version") != PATCH_RECORD_VERSION:
        raise PatchError(
            f"config.{PATCH_CONFIG_KEY} has version {record.get('version')!r}; this crrelu-llm reads "
            f"version {PATCH_RECORD_VERSION}. Upgrade crrelu-llm to load this checkpoint."
        )
    for path, entry in record.get("modules", {}).items():
        local = _resolve(root, path)
        if local is None:
            continue
        new = recorded_activation(entry)  # a class that cannot be imported: a one-line PatchError naming it
        current = root.get_submodule(local)
        if type(current) is type(new) and not entry.get("activation_kwargs"):
            if isinstance(current, CRReLU):  # built from the config key: give it the recorded init
                current.epsilon_init = new.epsilon_init
            mark_patched(current)
            continue
        device, dtype = placement(root, local)
        set_submodule(root, local, mark_patched(new.to(device=device, dtype=dtype)))


def recorded_activation(entry: dict) -> nn.Module:
    """A fresh module for one entry of a patch record (name or import path, kwargs, eps init).
    A class the record names by import path is imported only when trusted
    (:mod:`crrelu_llm.patching.trust`); otherwise a one-line error, before any import."""
    args = (entry["activation"], entry.get("epsilon_init", DEFAULT_EPSILON_INIT), entry.get("activation_kwargs"))
    if is_import_path(entry["activation"]):
        require(entry["activation"], f"this checkpoint (config.{PATCH_CONFIG_KEY})")
    if deepspeed_zero3_enabled() and is_import_path(entry["activation"]):
        # ZeRO-3 partitions parameters as modules are built, and breaks on a 0-dim one: say so in a line
        with outside_zero3_init():
            scalars = [n for n, p in make_activation(*args).named_parameters() if p.dim() == 0]
        if scalars:
            raise PatchError(
                f"{entry['activation']} holds 0-dim parameters ({', '.join(scalars)}), which DeepSpeed "
                "ZeRO-3 cannot partition while it loads a checkpoint: hold them with shape (1,) under "
                "ZeRO-3 (as crrelu_llm.CRReLU and SwishBeta do), or load this checkpoint under ZeRO-2 "
                "or FSDP"
            )
    return make_activation(*args)


def verify_patch(model: nn.Module) -> None:
    """Check that every module the config records is in place with the recorded activation."""
    root = base_model(model)
    record = patch_record(root) or {}
    problems = []
    for path, entry in record.get("modules", {}).items():
        try:
            module = root.get_submodule(path)
        except AttributeError:
            problems.append(f"{path}: missing")
            continue
        expected = type(recorded_activation(entry))
        if type(module) is not expected:
            problems.append(f"{path}: {type(module).__name__}, expected {expected.__name__}")
    if problems:
        raise ModelLoadError(
            f"The model does not match its recorded patch (config.{PATCH_CONFIG_KEY}): " + "; ".join(problems)
        )
