"""Checkpoints that load without crrelu-llm: the Hugging Face remote-code convention.

:func:`export_remote_code` writes a patched checkpoint with ``modeling_crrelu.py`` beside it and
``auto_map`` in its config, so that

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

rebuilds the CRReLU modules (and their trained eps) in an environment that has only
transformers and torch. The modeling file is self-contained: it defines CRReLU (and carries the
source of any other patched class, when that is self-contained:
:mod:`crrelu_llm.patching.export_classes`), registers the ``"crrelu"`` activation name, and
subclasses the checkpoint's own architecture class so that
the modules recorded in ``config.crrelu_llm_patch`` are replaced before the weights load.
"""

from __future__ import annotations

import re
from pathlib import Path

from crrelu_llm import run_files
from crrelu_llm.errors import ModelLoadError, PatchError
from crrelu_llm.files import refuse_existing, write_directory_atomic, write_text_atomic
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT
from crrelu_llm.patching.export_classes import HEADER_IMPORTS, exported_classes
from crrelu_llm.patching.loading import load_causal_lm, load_tokenizer
from crrelu_llm.patching.record import GUARD_PREFIX, patch_record

MODELING_FILE = "modeling_crrelu.py"

_TEMPLATE = '''"""CRReLU for this checkpoint, written by crrelu-llm {version}; needs only torch and transformers.

CRReLU(x) = relu(x) + eps * x * exp(-x**2 / 2), with a learnable scalar eps per module
(Sun et al., arXiv 2405.12954). Load with
    AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
"""

{header_imports}import torch
from torch import nn
from transformers import {base}
from transformers.activations import ACT2CLS, ACT2FN


class CRReLU(nn.Module):
    def __init__(self, epsilon_init={default_epsilon}):
        super().__init__()
        self.epsilon_init = float(epsilon_init)
        self.epsilon = nn.Parameter(torch.tensor(self.epsilon_init))

    def forward(self, x):
        y = x.float()
        eps = self.epsilon.float()
        return (torch.relu(y) + eps * y * torch.exp(-y * y / 2)).to(x.dtype)

    def extra_repr(self):
        return "epsilon={{:.6g}}".format(self.epsilon.item()) if not self.epsilon.is_meta else ""


if "crrelu" not in ACT2CLS:  # crrelu-llm, when installed, registers its own (same function)
    ACT2CLS["crrelu"] = CRReLU
    ACT2FN["crrelu"] = CRReLU


{classes}

_CLASSES = {table}
for _name, _cls in _CLASSES.items():  # a built-in name a config key may hold (swish_beta)
    if ":" not in _name and _name not in ACT2CLS:
        ACT2CLS[_name] = _cls
        ACT2FN[_name] = _cls


def _resolve(root, path):
    parts = path.split(".")
    for start in range(len(parts)):
        candidate = ".".join(parts[start:])
        try:
            root.get_submodule(candidate)
            return candidate
        except AttributeError:
            continue
    return None


def _rebuild(root, record):
    for path, entry in record.get("modules", {{}}).items():
        local = _resolve(root, path)
        if local is None:
            continue
        if entry["activation"] == "crrelu":
            new = CRReLU(entry.get("epsilon_init", {default_epsilon}))
        elif entry["activation"].startswith("corrected_"):
            new = CorrectedActivation(entry["activation"][len("corrected_"):],
                                      entry.get("epsilon_init", {default_epsilon}))
        elif entry["activation"].startswith("matched_"):
            new = MatchedActivation(entry["activation"][len("matched_"):], **entry.get("activation_kwargs", {{}}))
        elif entry["activation"] in _CLASSES:
            new = _CLASSES[entry["activation"]](**entry.get("activation_kwargs", {{}}))
        else:
            new = ACT2FN[entry["activation"]]
        current = root.get_submodule(local)
        if type(current).__name__ == type(new).__name__:
            continue
        parent, _, name = local.rpartition(".")
        setattr(root.get_submodule(parent) if parent else root, name, new)


{config_class}
class {name}({base}):
{config_line}
    def post_init(self, *args, **kwargs):
        _rebuild(self, getattr(self.config, "crrelu_llm_patch", None) or {{}})
        return super().post_init(*args, **kwargs)

    def _init_weights(self, module):
        if isinstance(module, CRReLU):
            if not module.epsilon.is_meta:
                with torch.no_grad():
                    module.epsilon.fill_(module.epsilon_init)
            return
        if type(module) in _CLASSES.values() or type(module).__name__ in ("CorrectedActivation", "MatchedActivation"):
            if hasattr(module, "reset_parameters") and not any(p.is_meta for p in module.parameters()):
                module.reset_parameters()
            return
        return super()._init_weights(module)
'''


_CONFIG_CLASS = '''from transformers import {base_config}


class CRReLUConfig({base_config}):
    """{base_config} under the model type this checkpoint is saved with, which plain transformers
    refuses (the patch cannot be told by a config key, so the original type would build the
    original activation)."""

    model_type = "{model_type}"

'''


def modeling_source(
    architecture: str, guarded_type: str | None = None, base_config: str | None = None, record: dict | None = None
) -> tuple[str, str]:
    """The modeling file for ``architecture`` (a transformers class name) and its class name.
    With ``guarded_type`` it also defines ``CRReLUConfig``, the config class for a checkpoint
    saved under that model type (see :func:`crrelu_llm.patching.record.register_with_transformers`)."""
    import transformers

    from crrelu_llm.version import __version__

    for cls in filter(None, (architecture, base_config)):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cls) or not hasattr(transformers, cls):
            raise PatchError(f"{cls!r} is not a transformers class: cannot write remote code for it")
    name = f"CRReLU{architecture}"
    config_class = _CONFIG_CLASS.format(base_config=base_config, model_type=guarded_type) if guarded_type else ""
    config_line = "    config_class = CRReLUConfig\n" if guarded_type else ""
    classes, table = exported_classes(record or {})  # refused here unless each is self-contained
    return _TEMPLATE.format(
        version=__version__,
        base=architecture,
        name=name,
        config_class=config_class,
        default_epsilon=DEFAULT_EPSILON_INIT,
        config_line=config_line,
        classes=classes,
        table="{" + ", ".join(f"{k!r}: {v}" for k, v in table.items()) + "}",
        header_imports=HEADER_IMPORTS if table else "",
    ), name


def export_remote_code(model: str, out: Path, overwrite: bool = False) -> Path:
    """Write the patched checkpoint ``model`` to ``out`` with ``modeling_crrelu.py`` and
    ``auto_map``, so that it loads with ``trust_remote_code=True`` and no crrelu-llm."""
    refuse_existing(Path(out), overwrite)
    loaded = load_causal_lm(str(model))
    record = patch_record(loaded)
    if not record:
        raise PatchError(f"{model} is not patched (no config.crrelu_llm_patch): there is nothing to export")
    architecture = type(loaded).__name__
    guarded = GUARD_PREFIX + type(loaded.config).model_type if record.get("guard") == "model_type" else None
    source, name = modeling_source(architecture, guarded, type(loaded.config).__name__, record)
    try:
        tokenizer = load_tokenizer(str(model))
    except ModelLoadError:  # a checkpoint without a tokenizer is still a model
        tokenizer = None

    def write(tmp: Path) -> None:
        loaded.config.auto_map = {"AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{name}"}
        if guarded:  # the saved model type is unknown to transformers: the config class comes along
            loaded.config.auto_map["AutoConfig"] = f"{MODELING_FILE[:-3]}.CRReLUConfig"
        loaded.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_text_atomic(tmp / MODELING_FILE, source)
        for extra in (run_files.PATCH_REPORT, run_files.MODEL_CARD):
            if (Path(model) / extra).exists():
                write_text_atomic(tmp / extra, (Path(model) / extra).read_text())

    write_directory_atomic(Path(out), overwrite, write)
    return Path(out)
