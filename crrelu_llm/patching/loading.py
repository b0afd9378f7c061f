"""Load causal LMs by hub id, local path or built-in tiny name, and check patched ones.

``MODEL`` on the command line is a Hugging Face hub id (``gpt2``), a local directory written by
``save_pretrained``, or ``tiny-<model_type>`` (``tiny-gpt2``, ``tiny-llama``...): a tiny random
model built offline, for trying the tool without a download. ``trust_remote_code`` is off
unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from crrelu_llm import run_files
from crrelu_llm.data.encoding import ensure_pad_token
from crrelu_llm.errors import CRReLULLMError, ModelLoadError, UsageError
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT
from crrelu_llm.ops.distributed import full_parameter
from crrelu_llm.patching.patch import activation_parameters
from crrelu_llm.patching.record import verify_patch
from crrelu_llm.patching.tiny import TINY_MODEL_PREFIX, tiny_causal_lm, tiny_config, tiny_model_type, tiny_tokenizer
from crrelu_llm.patching.trust import trusting

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_run(name_or_path) -> bool:
    """A PEFT run directory: an adapter (``adapter_config.json``) and no full model config."""
    path = Path(str(name_or_path))
    return path.is_dir() and (path / ADAPTER_CONFIG).exists() and not (path / "config.json").exists()


def adapter_base(path: Path) -> tuple[str, int]:
    """The model a PEFT run's adapter was trained on (its ``recipe.yaml``, else PEFT's own record)
    and the seed it was built with (which matters for ``tiny-*`` models only)."""
    import json

    import yaml

    recipe = yaml.safe_load((path / run_files.RECIPE).read_text()) or {} if (path / run_files.RECIPE).exists() else {}
    base = recipe.get("model_name_or_path") or json.loads((path / ADAPTER_CONFIG).read_text()).get(
        "base_model_name_or_path"
    )
    if not base:
        raise ModelLoadError(
            f"{path} holds a PEFT adapter whose base model is recorded nowhere (no recipe.yaml, and "
            f"base_model_name_or_path is null in {ADAPTER_CONFIG}): set it there"
        )
    return str(base), int(recipe.get("seed", 0) or 0)


def _refuse_non_model_dir(name, also_fine: tuple[str, ...] = ()) -> None:
    path = Path(str(name))
    if path.is_dir() and not any((path / f).exists() for f in ("config.json", ADAPTER_CONFIG, *also_fine)):
        raise ModelLoadError(f"{str(name)!r} is not a model directory (no config.json or {ADAPTER_CONFIG})")


def _hint(name: str) -> str:
    if Path(name).is_dir() and not (Path(name) / "config.json").exists():
        return f"{name!r} is not a model directory (no config.json or {ADAPTER_CONFIG})"
    if Path(name).exists():
        return f"{name!r} exists locally but is not a transformers checkpoint (its config.json could not be read)"
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return f"{name!r} looks like a path but no such local directory exists"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_HUB_OFFLINE=1 is set and the model is not in the local cache; pass a local directory"
    return (
        f"{name!r} is neither a local directory nor a reachable hub id; check the spelling, "
        f"your network, or use a built-in tiny model such as '{TINY_MODEL_PREFIX}gpt2'"
    )


def load_config(name_or_path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config only (no weights are downloaded)."""
    if is_adapter_run(name_or_path):  # a LoRA run: its base model's config
        return load_config(adapter_base(Path(name_or_path))[0], trust_remote_code)
    if tiny_model_type(name_or_path):
        try:
            return tiny_config(tiny_model_type(name_or_path))
        except ValueError as err:
            raise ModelLoadError(f"{name_or_path!r}: {err}") from err
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not load the config of {name_or_path!r}: {_hint(name_or_path)}. ({err})") from err


def load_causal_lm(
    name_or_path: str,
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    seed: int = 0,
    **kwargs,
) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with clear errors, then a check that a patched
    checkpoint came back as saved: the recorded modules are in place and every ``epsilon``
    equals the value stored in the safetensors files, bit for bit."""
    model_type = tiny_model_type(name_or_path)
    if model_type:
        try:
            return tiny_causal_lm(model_type, seed=seed)
        except ValueError as err:
            raise ModelLoadError(f"{name_or_path!r}: {err}") from err
    if is_adapter_run(name_or_path):
        return load_adapter_run(Path(name_or_path), dtype=dtype, trust_remote_code=trust_remote_code)
    _refuse_non_model_dir(name_or_path)
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise UsageError(
                f"dtype must be 'auto' or a torch dtype name such as 'float32' or 'bfloat16', got {dtype!r}"
            )
        dtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
        )
    except CRReLULLMError:  # ours already says what is wrong (an untrusted class, a record too new)
        raise
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not load {name_or_path!r}: {_hint(name_or_path)}. ({err})") from err
    with trusting(trust_remote_code):  # the check rebuilds the recorded classes: as trusted as the load
        verify_patch(model)
    if Path(name_or_path).is_dir():
        check_stored_epsilons(model, Path(name_or_path))
    return model


def load_adapter_run(
    path: Path, dtype="auto", trust_remote_code: bool = False, merge: bool = True, trainable: bool = False
):
    """A PEFT run as a model: its base model, patched as the run's ``patch_report.json`` records,
    with the adapter attached by PEFT (``modules_to_save``, the eps included); every eps is checked
    against the adapter's safetensors, bit for bit. Merged (``merge_and_unload``) unless ``merge``
    is false: the result is then a full patched model like any checkpoint of this project.
    Unmerged and ``trainable``: the adapter, ready to train further."""
    import json

    from peft import PeftModel

    from crrelu_llm.patching.discovery import UNMEASURED, is_import_path, needs_measurement
    from crrelu_llm.patching.patch import patch_model
    from crrelu_llm.patching.record import PATCH_CONFIG_KEY, patch_record
    from crrelu_llm.patching.trust import require

    base, seed = adapter_base(path)
    model = load_causal_lm(base, dtype=dtype, trust_remote_code=trust_remote_code, seed=seed)
    report_file = path / run_files.PATCH_REPORT
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    if report and not report.get("already_patched"):
        if is_import_path(report["activation"]):  # a class the run names: imported only if trusted
            with trusting(trust_remote_code):
                require(report["activation"], f"the adapter run {path}")
        measured = needs_measurement(report["activation"], report.get("activation_kwargs"))
        patch_model(
            model,
            activation=report["activation"],
            epsilon_init=report.get("epsilon_init") or DEFAULT_EPSILON_INIT,
            layers=report.get("layers"),
            activation_kwargs=UNMEASURED if measured else report.get("activation_kwargs"),
        )
        if measured:  # matched_<base>: each layer's mu and sigma, as measured when the run patched it
            from crrelu_llm.patching.calibration import set_measured

            set_measured(model, report.get("calibrated") or {})
        calibrated = report.get("calibrated_epsilons") or {}
        record = patch_record(model)
        with torch.no_grad():  # eps that did not train (activation_parameters: freeze) are the calibrated ones
            for module_path, value in calibrated.items():
                model.get_submodule(module_path).epsilon.fill_(value)
                record["modules"][module_path]["epsilon_init"] = value
        setattr(model.config, PATCH_CONFIG_KEY, record)
    try:
        wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(
            f"the adapter in {path} does not fit its base model {base!r} patched as recorded "
            f"({type(err).__name__}: {err})"
        ) from err
    if not merge:
        return wrapped
    merged = wrapped.merge_and_unload()
    stored = stored_activation_parameters(path)
    for key, value in stored.items():
        name = key.removeprefix("base_model.model.")
        _same_value(
            name,
            activation_parameters(merged).get(name),
            value,
            f"the adapter in {path}",
            "the adapter was not attached faithfully",
        )
    merged.config.crrelu_llm_adapter = {"run": str(path), "base": base}  # where the merged weights came from
    return merged


def stored_activation_parameters(checkpoint_dir: Path, names=None) -> dict[str, torch.Tensor]:
    """The tensors of ``names`` (default: every ``*.epsilon``; an adapter's activation parameters,
    named like the modules it saves) stored in the checkpoint's safetensors files."""
    found = {}
    for file in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            modules = set()
            if names is None and file.name.startswith("adapter"):
                import json

                modules = set(
                    json.loads((Path(checkpoint_dir) / "adapter_config.json").read_text()).get("modules_to_save") or []
                )
            for key in handle.keys():
                wanted = (
                    key in names
                    if names is not None
                    else (key.endswith(".epsilon") or any(f".{m}." in f".{key}" for m in modules))
                )
                if wanted:
                    found[key] = handle.get_tensor(key)
    return found


def _same_value(name: str, param, stored: torch.Tensor, where, why: str) -> None:
    if param is None:
        return
    loaded = full_parameter(param).cpu()
    expected = stored.to(loaded.dtype).reshape(loaded.shape)
    if not torch.equal(loaded, expected):
        raise ModelLoadError(f"{name} loaded as {_shown(loaded)} but {where} stores {_shown(stored)}: {why}")


def _shown(t: torch.Tensor) -> str:
    return repr(t.reshape(()).item()) if t.numel() == 1 else f"a tensor of norm {float(t.float().norm()):.6g}"


def check_stored_epsilons(model: torch.nn.Module, checkpoint_dir: Path) -> None:
    """Raise if a loaded activation parameter (CRReLU's ``epsilon``, any patched class's) differs
    from the checkpoint's (transformers can silently re-initialise parameters it does not know)."""
    params = activation_parameters(model)
    stored = stored_activation_parameters(checkpoint_dir, set(params))
    for name, param in params.items():
        if name in stored:
            _same_value(
                name,
                param,
                stored[name],
                checkpoint_dir,
                "the checkpoint was not loaded faithfully (was crrelu_llm imported before loading?)",
            )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer of a hub id or local checkpoint (``tiny-*``: the offline character tokenizer)."""
    from transformers import AutoTokenizer

    if tiny_model_type(name_or_path):
        return tiny_tokenizer()
    _refuse_non_model_dir(name_or_path, also_fine=("tokenizer_config.json", "tokenizer.json"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"No tokenizer could be loaded from {name_or_path!r}: {_hint(name_or_path)} ({err})"
        ) from err
    ensure_pad_token(tokenizer)
    return tokenizer
